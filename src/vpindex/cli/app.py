"""The typer application that the ``vpindex`` console script runs.

:class:`VpindexGroup` routes every error through :mod:`vpindex.cli.errors` (one ``error:`` line
on stderr, exit status 2 for a user's mistake); :func:`build_app` makes the application and
registers the commands explicitly (:func:`vpindex.cli.commands.register`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from vpindex.cli.commands import register
from vpindex.cli.errors import FAILED_EXIT, error_line, report_click_error

__all__ = ["VpindexGroup", "app", "build_app", "main"]


class VpindexGroup(TyperGroup):
    """The top-level command group: runs a command in click's non-standalone mode and turns
    whatever it raises into the CLI's one error path instead of usage boxes and tracebacks."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        """As click's ``main``; in standalone mode (the console script, ``CliRunner``) every
        error ends as one ``error:`` line on stderr and the exit status it carries."""
        if not standalone_mode:
            return super().main(
                args, prog_name, complete_var, False, windows_expand_args, **extra
            )  # pragma: no cover - only for embedding callers
        try:
            rv = super().main(args, prog_name, complete_var, False, windows_expand_args, **extra)
        except typer.TyperException as err:
            if type(err).__name__ == "NoArgsIsHelpError":  # `vpindex` alone: the help is asked for
                typer.echo(err.format_message())
                sys.exit(0)
            sys.exit(report_click_error(err))
        except typer.Abort:
            error_line("aborted")
            sys.exit(FAILED_EXIT)
        except BrokenPipeError:  # `vpindex ... | head`: the reader left; not an error to report
            sys.exit(FAILED_EXIT)
        sys.exit(rv if isinstance(rv, int) else 0)


def _show_version(value: bool) -> None:
    if value:
        from importlib.metadata import version  # the installed distribution's version

        typer.echo(f"vpindex {version('vpindex')}")
        raise typer.Exit(0)


def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_show_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Hyper-V VP-index translation and the PV TLB-flush / PV IPI hypercalls."""


def build_app() -> typer.Typer:
    """The ``vpindex`` application with every command registered."""
    application = typer.Typer(
        name="vpindex",
        cls=VpindexGroup,
        help="Hyper-V VP-index translation and the PV TLB-flush / PV IPI hypercalls.",
        no_args_is_help=True,
        add_completion=False,
        rich_markup_mode="markdown",
        pretty_exceptions_show_locals=False,
    )
    application.callback()(_root)
    register(application)
    return application


app = build_app()


def main() -> None:
    """Console-script entry point."""
    app()
