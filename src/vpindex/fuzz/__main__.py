"""``python -m vpindex.fuzz TARGET --runs N``: coverage-guided fuzzing with atheris.

Each target runs in its own process (``vpindex.fuzz.runner``): libFuzzer reads the seed corpus
(``--corpus``, by default the checked-in ``corpus/<target>/``, never written to), writes the
inputs it finds to ``--out`` (by default a temporary directory, removed afterwards) and stops
after ``--runs`` executions or ``--seconds``. A finding (an exception or a property violation)
leaves the input as ``<artifacts>/<target>-crash-*`` and makes the exit status 1. Arguments
after ``--`` go to libFuzzer unchanged (e.g. ``-- -seed=1 -max_len=8192``).

Exit status: 0 every target clean, 1 a finding or a failed run, 2 atheris missing / bad usage.
"""

from __future__ import annotations

import argparse
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
    cmd = [sys.executable, "-m", "vpindex.fuzz.runner", target]
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


def main(argv: list[str] | None = None) -> int:
    args_in = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in args_in:
        cut = args_in.index("--")
        args_in, extra = args_in[:cut], args_in[cut + 1 :]
    ap = argparse.ArgumentParser(
        prog="python -m vpindex.fuzz",
        description="Coverage-guided fuzzing (atheris/libFuzzer) of vpindex's guest-input "
        "decoders and Partition.hypercall. Arguments after -- go to libFuzzer.",
    )
    ap.add_argument("target", choices=[*TARGETS, "all"], metavar="TARGET",
                    help=f"one of {', '.join(TARGETS)}, or all")  # fmt: skip
    ap.add_argument("--runs", type=int, default=None,
                    help="executions per target (libFuzzer -runs); default 10000 unless "
                    "--seconds is given")  # fmt: skip
    ap.add_argument("--seconds", type=int, default=None,
                    help="time limit per target (libFuzzer -max_total_time)")  # fmt: skip
    ap.add_argument("--corpus", type=Path, default=None,
                    help="seed corpus directory (read only); default: the checked-in "
                    "src/vpindex/fuzz/corpus/<target>/")  # fmt: skip
    ap.add_argument("--out", type=Path, default=None,
                    help="keep the inputs found here (per target: OUT/<target>); default: "
                    "a temporary directory, removed")  # fmt: skip
    ap.add_argument("--artifacts", type=Path, default=Path("fuzz-artifacts"),
                    help="where a finding's input goes (default ./fuzz-artifacts)")  # fmt: skip
    ap.add_argument("-v", "--verbose", action="store_true", help="show libFuzzer's output")
    args = ap.parse_args(args_in)
    try:
        import atheris  # noqa: F401
    except ImportError:
        print(ATHERIS_MISSING, file=sys.stderr)
        return 2
    runs = args.runs if args.runs is not None or args.seconds is not None else 10000
    targets = list(TARGETS) if args.target == "all" else [args.target]
    failed = False
    for target in targets:
        corpus = args.corpus if args.corpus is not None else seed_dir(target)
        if args.corpus is not None and args.target == "all":
            corpus = args.corpus / target
        out = args.out / target if args.out is not None else None
        result = run_target(
            target, runs, args.seconds, corpus, out, args.artifacts, extra, args.verbose
        )
        print(result.line(), flush=True)
        failed |= not result.ok
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
