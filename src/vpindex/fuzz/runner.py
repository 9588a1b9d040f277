"""One libFuzzer run of one target, in this process: ``python -m vpindex.fuzz libfuzzer TARGET
[libFuzzer arguments and corpus directories]``. A campaign (:mod:`vpindex.fuzz.campaign`)
starts it once per target (libFuzzer runs once per process and exits the process when done)."""

from __future__ import annotations

import gc
import importlib
import sys
import types
from collections.abc import Callable

from vpindex.fuzz import TARGETS

__all__ = ["ATHERIS_MISSING", "fuzz_in_process", "load_target"]

ATHERIS_MISSING = (
    "vpindex.fuzz needs atheris (coverage-guided fuzzing for Python, Linux): "
    "pip install 'atheris>=2.3' (it is in the [dev] extra)"
)


def _vpindex_modules() -> set[str]:
    return {name for name in sys.modules if name == "vpindex" or name.startswith("vpindex.")}


def load_target(target: str, instrument: bool = True) -> Callable[[bytes], None]:
    """Import ``target``'s ``test_one_input``, with atheris coverage instrumentation of all of
    vpindex when ``instrument``.

    Modules imported from here on are instrumented by ``atheris.instrument_imports()``. The
    ones already loaded (``import vpindex`` loads abi, vpmap and engine, and this module is
    inside vpindex) cannot be re-imported without duplicating their classes, so each of their
    functions is instrumented in place with ``atheris.instrument_func``.
    """
    if target not in TARGETS:
        raise ValueError(f"unknown fuzz target {target!r}; valid: {', '.join(TARGETS)}")
    name = f"vpindex.fuzz.targets.{target}"
    if not instrument:
        module = importlib.import_module(name)
    else:
        import atheris

        already = _vpindex_modules()
        with atheris.instrument_imports(include=["vpindex"]):
            module = importlib.import_module(name)
        for obj in gc.get_objects():
            if isinstance(obj, types.FunctionType) and obj.__module__ in already:
                atheris.instrument_func(obj)
    fn: Callable[[bytes], None] = module.test_one_input
    return fn


def fuzz_in_process(target: str, libfuzzer_args: list[str]) -> int:
    """Run libFuzzer on ``target`` with ``libfuzzer_args`` (options and corpus directories) in
    this process; libFuzzer exits the process when done. Returns 2 when atheris is missing."""
    try:
        import atheris
    except ImportError:
        print(ATHERIS_MISSING, file=sys.stderr)
        return 2
    test_one_input = load_target(target)
    atheris.Setup([f"vpindex-fuzz-{target}", *libfuzzer_args], test_one_input)
    atheris.Fuzz()  # runs libFuzzer, then exits the process
    return 0
