"""A fuzzing campaign (``python -m vpindex.fuzz TARGET --runs N``) with atheris.

Each target runs in its own process (``python -m vpindex.fuzz libfuzzer TARGET``, see
:mod:`vpindex.fuzz.runner`): libFuzzer reads the seed corpus
(``--corpus``, by default the checked-in ``corpus/<target>/``, never written to), writes the
inputs it finds to ``--out`` (by default a temporary directory, removed afterwards) and stops
after ``--runs`` executions or ``--seconds``. A finding (an exception or a property violation)
leaves the input as ``<artifacts>/<target>-crash-*`` and makes the exit status 1. Arguments
after ``--`` go to libFuzzer unchanged (e.g. ``-- -seed=1 -max_len=8192``).

Exit status: 0 every target clean, 1 a finding or a failed run, 2 atheris missing / bad usage.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from vpindex.fuzz import TARGETS, seed_dir
from vpindex.fuzz.runner import ATHERIS_MISSING

__all__ = ["DEFAULT_RUNS", "RunResult", "fuzz", "run_target"]

#: Executions per target when neither runs nor seconds are given.
DEFAULT_RUNS = 10000

_STATS = re.compile(r"#(\d+)\s+(?:DONE|INITED|pulse|NEW|REDUCE)\s+cov: (\d+) ft: (\d+) corp: (\d+)")
_DONE = re.compile(r"Done (\d+) runs in (\d+) second")


@dataclass
class RunResult:
    """What one target's run reported (libFuzzer's final statistics line)."""

    target: str
    returncode: int
    runs: int = 0
    cov: int = 0
    features: int = 0
    corpus: int = 0
    seconds: float = 0.0
    output: str = ""

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def line(self) -> str:
        rate = self.runs / self.seconds if self.seconds > 0 else 0.0
        verdict = "ok" if self.ok else f"FINDING/FAILED (exit {self.returncode})"
        return (
            f"{self.target:<10} runs {self.runs:>9}  cov {self.cov:>5}  ft {self.features:>6}  "
            f"corpus {self.corpus:>5}  {self.seconds:7.1f} s  {rate:8.0f}/s  {verdict}"
        )


def _parse(result: RunResult, text: str) -> None:
    for m in _STATS.finditer(text):
        result.runs = int(m.group(1))
        result.cov, result.features, result.corpus = (int(m.group(i)) for i in (2, 3, 4))
    done = _DONE.search(text)
    if done:
        result.runs = int(done.group(1))


def run_target(
    target: str,
    runs: int | None,
    seconds: int | None,
    corpus: Path,
    out: Path | None,
    artifacts: Path,
    extra: list[str],
    verbose: bool,
) -> RunResult:
    """Fuzz ``target`` in a child process; return its statistics."""
    work = out if out is not None else Path(tempfile.mkdtemp(prefix=f"vpindex-fuzz-{target}-"))
    work.mkdir(parents=True, exist_ok=True)
    created = not artifacts.exists()
    artifacts.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "vpindex.fuzz", "libfuzzer", target]
    if runs is not None:
        cmd.append(f"-runs={runs}")
    if seconds is not None:
        cmd.append(f"-max_total_time={seconds}")
    cmd += [f"-artifact_prefix={artifacts}/{target}-", "-print_final_stats=1", *extra]
    cmd += [str(work)] + ([str(corpus)] if corpus.is_dir() else [])
    start = time.monotonic()
    lines: list[str] = []
    try:
        with subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        ) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.append(line)
                if verbose:
                    sys.stdout.write(line)
                    sys.stdout.flush()
        returncode = proc.returncode
    finally:
        if out is None:
            shutil.rmtree(work, ignore_errors=True)
        if created and not any(artifacts.iterdir()):
            artifacts.rmdir()  # nothing found: leave no empty directory behind
    result = RunResult(target, returncode, seconds=time.monotonic() - start)
    result.output = "".join(lines)
    _parse(result, result.output)
    if not verbose and not result.ok:
        sys.stdout.write("".join(lines[-60:]) + "\n")
    return result


def fuzz(
    target: str,
    *,
    runs: int | None,
    seconds: int | None,
    corpus: Path | None,
    out: Path | None,
    artifacts: Path,
    extra: list[str],
    verbose: bool,
) -> int:
    """Fuzz ``target`` (or every target for ``"all"``), one child process each; print one line
    per target. Returns 0 when every target ran clean, 1 on a finding or a failed run, 2 when
    atheris is missing. ``runs`` defaults to 10000 unless ``seconds`` is given."""
    try:
        import atheris  # noqa: F401
    except ImportError:
        print(ATHERIS_MISSING, file=sys.stderr)
        return 2
    if runs is None and seconds is None:
        runs = DEFAULT_RUNS
    targets = list(TARGETS) if target == "all" else [target]
    failed = False
    for name in targets:
        seeds = corpus if corpus is not None else seed_dir(name)
        if corpus is not None and target == "all":
            seeds = corpus / name
        kept = out / name if out is not None else None
        result = run_target(name, runs, seconds, seeds, kept, artifacts, extra, verbose)
        print(result.line(), flush=True)
        failed |= not result.ok
    return 1 if failed else 0
