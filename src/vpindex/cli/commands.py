"""Registers every sub-command on :data:`vpindex.cli.app.app`."""
