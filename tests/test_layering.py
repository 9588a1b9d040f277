"""The architecture rule, checked on the source: data flows abi -> vpmap -> engine -> backends
-> cli, nothing imports a layer above itself, the core imports only the standard library, the
KVM backend keeps the order its package docstring states, and no module imports itself through
others (every import counts: function-local ones and those under ``TYPE_CHECKING`` too)."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "vpindex"
# Rank of each top-level part of the package; a module may import only ranks <= its own.
RANK = {
    "defaults": 0,  # constants only
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
CORE = ("defaults", "abi", "vpmap", "engine")


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
NAMES = {m for m, _ in MODULES}


def _resolved_imports(module: str, path: Path) -> set[str]:
    """The vpindex modules ``module`` imports anywhere in its text: ``from p import m`` counts as
    importing module ``p.m`` when that is a module, else package ``p``; relative imports are
    resolved."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in NAMES}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if sub in NAMES:
                    found.add(sub)
                elif base in NAMES:
                    found.add(base)
    found.discard(module)
    return found


GRAPH = {m: _resolved_imports(m, p) for m, p in MODULES}


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


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles() -> None:
    cycles = _cycles(GRAPH)
    assert not cycles, f"modules that import each other: {cycles}"


def test_the_cycle_check_finds_a_cycle() -> None:
    """Control: the same check on a graph with a two-module cycle behind others."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"b"}, "d": set()}
    assert _cycles(graph) == [["b", "c"]]


KVM = "vpindex.backends.kvm"


def _kvm_chain() -> list[list[str]]:
    """The layers the KVM package docstring lists in its ``::`` block, in order."""
    doc = ast.get_docstring(ast.parse((SRC / "backends" / "kvm" / "__init__.py").read_text()))
    assert doc is not None
    block = re.search(r"::\n\n((?:    .*\n?)+)", doc)
    assert block is not None, "the KVM package docstring has no layer chain"
    text = " ".join(block.group(1).split())
    return [[f"{KVM}.{name.strip()}" for name in layer.split(",")] for layer in text.split("->")]


def test_the_kvm_chain_names_every_module_once() -> None:
    named = [m for layer in _kvm_chain() for m in layer]
    modules = sorted(m for m in NAMES if m.startswith(KVM + "."))
    assert sorted(named) == modules


def test_kvm_modules_import_only_earlier_layers() -> None:
    layer_of = {m: i for i, layer in enumerate(_kvm_chain()) for m in layer}
    for module, rank in layer_of.items():
        for imported in GRAPH[module]:
            if imported.startswith(KVM + ".") and imported in layer_of:
                assert layer_of[imported] < rank, (
                    f"{module} (layer {rank}) imports {imported} (layer {layer_of[imported]})"
                )
            assert imported != KVM, f"{module} imports the package {KVM} itself"
