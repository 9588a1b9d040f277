"""Registers every sub-command on :data:`vpindex.cli.app.app` (importing a module registers it)."""

from vpindex.cli import decode, run

__all__ = ["decode", "run"]
