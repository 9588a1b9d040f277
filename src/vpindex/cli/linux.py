"""``vpindex linux ...``: the Linux guest (its kernel, its ``/init``) and runs of it.

User mistakes end with one line ``error: ...`` on stderr and exit status 2 (nothing on
stdout); a failed build exits 1.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from vpindex.backends.linux.build import (
    DEFAULT_TIMEOUT_S,
    BuildError,
    BuildResult,
    SourceError,
    build_kernel,
)

__all__ = ["linux_app"]

linux_app = typer.Typer(
    name="linux",
    help="Boot Linux as a Hyper-V guest: build its kernel and /init, run it.",
    no_args_is_help=True,
    add_completion=False,
)

_MAX_TIMEOUT_S = 24 * 3600.0


def _usage_error(message: str) -> NoReturn:
    """A user's mistake: one line on stderr, exit 2."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def _failure(message: str) -> NoReturn:
    """A failed run: one line on stderr, exit 1."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def build_or_exit(source: Path | None, timeout_s: float = DEFAULT_TIMEOUT_S) -> BuildResult:
    """:func:`build_kernel` with progress on stderr; exits 2 when the user must act (missing
    source or tools, a bad ``--source``) and 1 when the build fails."""
    try:
        return build_kernel(source, _progress, timeout_s=timeout_s)
    except SourceError as err:
        _usage_error(str(err))
    except BuildError as err:
        _failure(str(err))


@linux_app.command("build")
def build(
    source: Annotated[
        Path | None,
        typer.Option(
            "--source",
            help="A Linux source tree (or .tar.* of one); default: Debian's linux-source-6.12.",
        ),
    ] = None,
    timeout: Annotated[
        float, typer.Option(help="Seconds the whole build may take.")
    ] = DEFAULT_TIMEOUT_S,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Build the guest kernel and the project's /init (an uncompressed initramfs), or reuse
    them from the cache (keyed by kernel source, config fragment and compiler). Progress goes
    to stderr."""
    if not 0 < timeout <= _MAX_TIMEOUT_S:
        _usage_error(f"--timeout must be in (0, {_MAX_TIMEOUT_S:.0f}] seconds, got {timeout:g}")
    result = build_or_exit(source, timeout)
    if as_json:
        typer.echo(json.dumps(result.as_json(), indent=2))
        return
    k, i = result.kernel, result.initramfs
    typer.echo(f"kernel     {k.vmlinux}  (Linux {k.kernel_version}{_hit(k.cache_hit)})")
    typer.echo(f"config     {k.config}  (fragment sha256 {k.config_hash[:16]})")
    typer.echo(f"initramfs  {i.initramfs}  ({i.initramfs_bytes:,} bytes{_hit(i.cache_hit)})")


def _hit(cache_hit: bool) -> str:
    return ", cached" if cache_hit else ", built now"
