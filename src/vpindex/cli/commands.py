"""Registers every sub-command on :data:`vpindex.cli.app.app` (importing a module registers it)."""

from vpindex.cli import bench, decode, linux, replay, run

__all__ = ["bench", "decode", "linux", "replay", "run"]
