"""The typer application that the ``vpindex`` console script runs."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="vpindex",
    help="Hyper-V VP-index translation and the PV TLB-flush / PV IPI hypercalls.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="markdown",
)


def main() -> None:
    """Console-script entry point."""
    from vpindex.cli import commands  # noqa: F401  (registers the sub-commands)

    app()
