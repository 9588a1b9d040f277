"""Coverage-guided fuzzing of every guest-input decoder and of ``Partition.hypercall``.

Run ``python -m vpindex.fuzz TARGET --runs N`` (``TARGET`` one of :data:`TARGETS` or ``all``);
each target lives in :mod:`vpindex.fuzz.targets` and exposes ``test_one_input(data: bytes)``,
which raises on any property violation. Seeds are checked in under ``corpus/<target>/``
(regenerate them with ``python -m vpindex.fuzz seeds``; every tool is a command of ``python -m
vpindex.fuzz``, see its ``--help``). See docs/SECURITY.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

__all__ = ["CORPUS_DIR", "TARGETS", "seed_dir"]

#: Every fuzz target, in the order ``all`` runs them.
TARGETS: Final = ("vpset", "flush", "flush_ex", "ipi", "ipi_ex", "gva", "control", "hypercall")
CORPUS_DIR: Final = Path(__file__).resolve().parent / "corpus"


def seed_dir(target: str) -> Path:
    """The checked-in seed corpus of ``target``."""
    return CORPUS_DIR / target
