"""The ``vpindex`` command line: run | decode | bench | replay."""

from vpindex.cli.app import app, main

__all__ = ["app", "main"]
