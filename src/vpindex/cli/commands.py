"""Every ``vpindex`` command, registered explicitly on the application (importing a command
module registers nothing)."""

from __future__ import annotations

import typer

from vpindex.cli.bench import bench_app
from vpindex.cli.decode import decode
from vpindex.cli.linux import linux_app
from vpindex.cli.replay import replay
from vpindex.cli.run import run

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    """Add the commands to ``app``: ``run``, ``decode``, ``replay``, and the ``bench`` and ``linux``
    groups."""
    app.command("run")(run)
    app.command("decode")(decode)
    app.add_typer(bench_app, name="bench")
    app.command("replay")(replay)
    app.add_typer(linux_app, name="linux")
