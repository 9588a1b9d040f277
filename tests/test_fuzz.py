"""The fuzz harness runs: each target briefly through ``python -m vpindex.fuzz`` (what CI
does), the seed corpus stays untouched, and a missing atheris is a clear exit 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vpindex.fuzz import TARGETS, seed_dir

pytest.importorskip("atheris", reason="atheris is not installed (pip install '.[dev]')")

RUNS = 2000


def _run_fuzz(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: int = 300
) -> subprocess.CompletedProcess[str]:
    """``python -m vpindex.fuzz ARGS``, output captured as text, whatever its exit status."""
    return subprocess.run(
        [sys.executable, "-m", "vpindex.fuzz", *args],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=timeout,
    )


def _fuzz(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> str:
    """Its stdout, after checking that it exited 0."""
    proc = _run_fuzz(*args, env=env, cwd=cwd)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    return proc.stdout


_OVERSHOOT = 50


@pytest.mark.parametrize("target", TARGETS)
def test_target_runs_clean(target: str, tmp_path: Path) -> None:
    seeds = sorted(p.name for p in seed_dir(target).iterdir())
    out = _fuzz(target, "--runs", str(RUNS), "--artifacts", str(tmp_path / "art"), cwd=tmp_path)
    line = out.strip().splitlines()[-1]
    assert line.startswith(target) and line.endswith("ok"), out
    # libFuzzer checks -runs between executions, not before each one: it can overshoot by a
    # few (2003 for 2000 was seen once), never stop short.
    runs = int(line.split()[2])
    assert RUNS <= runs < RUNS + _OVERSHOOT, line
    assert sorted(p.name for p in seed_dir(target).iterdir()) == seeds  # never written to
    assert not (tmp_path / "art").exists()  # no finding, no artifact directory


def test_out_keeps_the_inputs_found(tmp_path: Path) -> None:
    _fuzz("control", "--runs", "500", "--out", str(tmp_path / "found"), cwd=tmp_path)
    assert any((tmp_path / "found" / "control").iterdir())


def test_missing_atheris_exits_2(tmp_path: Path) -> None:
    fake = tmp_path / "atheris"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('no atheris here')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    proc = _run_fuzz("vpset", "--runs", "10", env=env, timeout=60)
    assert proc.returncode == 2
    assert "needs atheris" in proc.stderr


def test_unknown_target_is_a_usage_error() -> None:
    proc = _run_fuzz("nope", timeout=60)
    assert proc.returncode == 2 and "invalid choice" in proc.stderr


def test_seeds_command_rebuilds_the_checked_in_corpus(tmp_path: Path) -> None:
    _fuzz("seeds", str(tmp_path))
    for target in TARGETS:
        built = {p.name: p.read_bytes() for p in (tmp_path / target).iterdir()}
        assert built == {p.name: p.read_bytes() for p in seed_dir(target).iterdir()}


def test_linecov_command_replays_a_corpus() -> None:
    out = _fuzz("linecov", "control", str(seed_dir("control")))
    count = len(list(seed_dir("control").iterdir()))
    assert out.startswith(f"control: {count} inputs replayed")
    assert "abi/control.py" in out
