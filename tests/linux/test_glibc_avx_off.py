"""The host fix that keeps glibc in the guest off AVX and AVX-512 (host_fixes.GLIBC_AVX_OFF_WORD):
the kernel hands the word to /init as an environment variable, and a static glibc program built
the way /init is picks no AVX or EVEX string function with it. Control: without the word, on a
CPU with AVX, the same program does pick one (so the check can fail)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from vpindex.backends.kvm.host_fixes import GLIBC_AVX_OFF_WORD, HIDE_FEATURES_WORDS

_PROGRAM = r"""
#define _GNU_SOURCE
#include <stdio.h>
#include <string.h>
int main(void) {
    void *f[] = {(void *)memcpy, (void *)memmove, (void *)memset, (void *)strlen,
                 (void *)strchr, (void *)memcmp, (void *)memchr, (void *)strcpy};
    for (unsigned i = 0; i < sizeof f / sizeof *f; i++) printf("%p\n", f[i]);
    return 0;
}
"""


def _picked(binary: Path, env: dict[str, str]) -> list[str]:
    """The names of the string functions glibc's ifunc resolvers picked."""
    out = subprocess.run([str(binary)], env=env, capture_output=True, text=True, check=True)
    symbols: dict[int, str] = {}
    nm = subprocess.run(["nm", str(binary)], capture_output=True, text=True, check=True)
    for line in nm.stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2].startswith("__"):
            symbols.setdefault(int(parts[0], 16), parts[2])
    return [symbols.get(int(a, 16), a) for a in out.stdout.split()]


@pytest.fixture(scope="module")
def binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("gcc") is None or shutil.which("nm") is None:
        pytest.skip("needs gcc and nm")
    d = tmp_path_factory.mktemp("avx")
    (d / "p.c").write_text(_PROGRAM)
    built = subprocess.run(
        ["gcc", "-static", "-O2", "-o", str(d / "p"), str(d / "p.c")],
        capture_output=True,
        check=False,
    )
    if built.returncode != 0:
        pytest.skip(f"cannot build a static glibc program: {built.stderr.decode()[-200:]}")
    return d / "p"


def _vector(names: list[str]) -> list[str]:
    return [n for n in names if "avx" in n.lower() or "evex" in n.lower()]


def test_the_word_reaches_init_as_an_environment_variable() -> None:
    assert GLIBC_AVX_OFF_WORD in HIDE_FEATURES_WORDS
    name, _, value = GLIBC_AVX_OFF_WORD.partition("=")
    # Linux treats a word whose name holds a dot as a module parameter, not an env variable
    assert name == "GLIBC_TUNABLES" and "." not in name and value
    assert not any(c.isspace() for c in GLIBC_AVX_OFF_WORD)


def test_glibc_picks_no_avx_string_function_with_the_word(binary: Path) -> None:
    name, _, value = GLIBC_AVX_OFF_WORD.partition("=")
    clean = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    with_word = _picked(binary, {**clean, name: value})
    assert _vector(with_word) == [], with_word
    without = _picked(binary, clean)
    if not _vector(without):
        pytest.skip(f"this CPU gives glibc no AVX string functions anyway: {without}")
    assert _vector(without)  # control: the check above can fail
