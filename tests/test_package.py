"""vpindex as a package: ``python -m build`` makes a wheel and an sdist, and the wheel installed
into a fresh virtual environment runs the main job. Needs PyPI for the build backend and the
runtime dependencies; slow (a minute or two), so it is marked ``package``."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import vpindex

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.package, pytest.mark.timeout(900)]


def _run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False, **kw)  # type: ignore[call-overload, no-any-return]


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    proc = _run(
        [sys.executable, "-m", "build", "--sdist", "--wheel", "--outdir", str(out), str(ROOT)]
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def test_build_makes_a_wheel_and_an_sdist_with_the_metadata(dist: Path) -> None:
    (wheel,) = dist.glob("vpindex-*.whl")
    (sdist,) = dist.glob("vpindex-*.tar.gz")
    assert wheel.name.startswith(f"vpindex-{vpindex.__version__}-py3-none-any")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        meta = zf.read(f"vpindex-{vpindex.__version__}.dist-info/METADATA").decode()
    assert "vpindex/cli/app.py" in names and "vpindex/py.typed" in names
    assert any(n.startswith("vpindex/fuzz/corpus/") for n in names)  # package data shipped
    assert not any(n.startswith(("tests/", ".venv")) for n in names)
    for field in ("Summary: Hyper-V", "License-Expression: MIT", "Requires-Python: >=3.11",
                  "Classifier: Programming Language :: Python :: 3.11", "Project-URL: Hyper-V TLFS",
                  "Provides-Extra: plot", "Provides-Extra: dev"):  # fmt: skip
        assert field in meta, field
    runtime = [line for line in meta.splitlines() if line.startswith("Requires-Dist:")
               and "extra ==" not in line]  # fmt: skip
    assert sorted(r.split()[1].split(">")[0] for r in runtime) == ["iced-x86", "rich", "typer"]
    with tarfile.open(sdist) as tf:
        members = [m.split("/", 1)[1] for m in tf.getnames() if "/" in m]
    for needed in (
        "pyproject.toml",
        "README.md",
        "LICENSE",
        "src/vpindex/__init__.py",
        "tests/test_cli.py",
    ):
        assert needed in members, needed
    assert not any(m.startswith((".venv/", ".git/")) for m in members)


def test_the_wheel_installed_in_a_fresh_venv_runs_the_main_job(dist: Path, tmp_path: Path) -> None:
    (wheel,) = dist.glob("vpindex-*.whl")
    venv = tmp_path / "venv"
    assert _run([sys.executable, "-m", "venv", str(venv)]).returncode == 0
    pip = _run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", str(wheel)])
    assert pip.returncode == 0, pip.stdout[-3000:] + pip.stderr[-3000:]
    exe = str(venv / "bin" / "vpindex")
    proc = _run([exe, "run", "--backend", "sim", "--json"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["backend"] == "sim" and report["failed"] == 0 and report["passed"] > 40
    assert _run([exe, "--version"]).stdout == f"vpindex {vpindex.__version__}\n"
    # plots are an extra: not installed, and --plot says how to get them
    plot = _run([exe, "bench", "--plot", str(tmp_path / "b.png")])
    assert (plot.returncode, plot.stdout) == (2, "")
    assert plot.stderr == "error: --plot: needs matplotlib: pip install 'vpindex[plot]'\n"
