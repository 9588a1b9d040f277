"""The architecture rule, checked on the source: data flows abi -> vpmap -> engine -> backends
-> cli, nothing imports a layer above itself, and the core imports only the standard library."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "vpindex"
# Rank of each top-level part of the package; a module may import only ranks <= its own.
RANK = {
    "abi": 0,
    "vpmap": 1,
    "engine": 2,
    "guest": 2,  # guest-side encoders: wire formats only, used by backends
    "backends": 3,
    "lab": 4,
    "fuzz": 4,
    "cli": 5,
    "__init__": 5,
    "__main__": 5,
}
CORE = ("abi", "vpmap", "engine")


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC.parent).with_suffix("")
        name = ".".join(rel.parts)
        if name.endswith(".__init__"):
            name = name[: -len(".__init__")]
        out.append((name, path))
    return out


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
    return found


MODULES = _modules()


@pytest.mark.parametrize(("module", "path"), MODULES, ids=[m for m, _ in MODULES])
def test_no_module_imports_a_layer_above_itself(module: str, path: Path) -> None:
    own = RANK[_part(module)]
    for imported in _imports(path):
        if imported == "vpindex" and module != "vpindex":
            pytest.fail(f"{module} imports the top-level package (a layer above everything)")
        if imported.startswith("vpindex."):
            target = _part(imported)
            assert RANK[target] <= own, (
                f"{module} (layer {own}) imports {imported} ({RANK[target]})"
            )


@pytest.mark.parametrize(
    ("module", "path"),
    [(m, p) for m, p in MODULES if _part(m) in CORE],
    ids=[m for m, _ in MODULES if _part(m) in CORE],
)
def test_core_imports_only_the_standard_library(module: str, path: Path) -> None:
    for imported in _imports(path):
        top = imported.split(".")[0]
        assert top == "vpindex" or top in sys.stdlib_module_names, f"{module} imports {imported}"


def test_every_part_of_the_package_has_a_rank() -> None:
    assert {_part(m) for m, _ in MODULES} <= set(RANK)
