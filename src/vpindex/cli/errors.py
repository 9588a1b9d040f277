"""The command line's one error path.

Two kinds of failure, the same on every command and backend:

* a **user's mistake** (a bad option value, a bad combination, an option the chosen backend does
  not use, an unreadable or unwritable path, an unusable ``/dev/kvm``): one line
  ``error: OPTION: what is wrong, with the value`` on stderr, exit status 2, nothing on stdout.
  Raise it with :func:`bad_option` (or let typer raise ``click.BadParameter`` from a callback or
  a ``min``/``max``/choice check); :func:`report_click_error` prints it.
* a **failed run** (a case failed, a guest faulted, a timeout): :func:`run_failed` prints
  ``error: ...`` on stderr, and under ``--json`` still one JSON object on stdout; exit status 1.

Sub-apps (``vpindex linux ...``) call the same helpers, so every command speaks alike.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

import typer

__all__ = [
    "FAILED_EXIT",
    "USAGE_EXIT",
    "bad_option",
    "check_output_path",
    "error_line",
    "output_file_option",
    "output_path_callback",
    "printable",
    "readable_file_size",
    "report_click_error",
    "run_failed",
    "usage_error",
    "write_output",
]

#: Exit status of a user's mistake (click's own usage errors use it too).
USAGE_EXIT = 2
#: Exit status of a run that failed.
FAILED_EXIT = 1


def printable(text: str, limit: int = 160) -> str:
    """``text`` safe to show on a terminal: control and other unprintable characters as
    ``\\xNN`` escapes, cut to ``limit`` characters."""
    out = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return out if len(out) <= limit else out[: limit - 3] + "..."


def error_line(message: str) -> None:
    """Print ``error: message`` (one line) on stderr."""
    sys.stderr.write(f"error: {printable(' '.join(message.split()), 2000)}\n")
    sys.stderr.flush()


def bad_option(option: str, message: str) -> NoReturn:
    """A user's mistake about ``option`` (e.g. ``"--vcpus"``); ``message`` says what is wrong
    and quotes the value. Exit status 2, reported by :func:`report_click_error`."""
    raise typer.BadParameter(message, param_hint=option)


def usage_error(message: str) -> NoReturn:
    """A user's mistake that no one option names (e.g. a tool to install first): one
    ``error: message`` line, exit status 2, as :func:`bad_option`."""
    raise typer.BadParameter(message)


def _hint(err: typer.BadParameter) -> str | None:
    if err.param_hint is not None:
        hint = err.param_hint
        return hint if isinstance(hint, str) else " / ".join(hint)
    if err.param is not None:
        if err.param.param_type_name == "option":
            return max(err.param.opts, key=len)
        return (err.param.name or "").upper()
    return None


def report_click_error(err: typer.TyperException) -> int:
    """Print a typer (click) error as the one ``error:`` line (no usage box, no traceback);
    return the exit status it carries (2 for usage errors)."""
    if isinstance(err, typer.BadParameter) and err.message:
        hint = _hint(err)
        message = err.message.removeprefix("Value error, ")  # typer's wording for a choice
        error_line(f"{hint}: {message}" if hint else message)
    else:
        message = err.format_message().removeprefix("Value error, ")
        error_line(message[:1].lower() + message[1:])
    return err.exit_code


def run_failed(
    message: str, *, as_json: bool = False, doc: dict[str, Any] | None = None
) -> NoReturn:
    """A run that failed: ``error: message`` on stderr; under ``--json`` one object on stdout
    (``doc`` — e.g. the partial report — with ``"error"`` set, or ``{"error": message}``);
    exit status 1."""
    error_line(message)
    if as_json:
        typer.echo(json.dumps({**(doc or {}), "error": message}))
    raise typer.Exit(FAILED_EXIT)


def check_output_path(option: str, path: Path) -> Path:
    """``path`` may be written as a file: not a directory, its directory exists and is writable
    (nothing is created here; a command never creates directories it was not asked to)."""
    if path.is_dir():
        bad_option(option, f"{path} is a directory; give a file name")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        bad_option(option, f"directory {parent} of {path} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        bad_option(option, f"{path} is not writable")
    return path


def readable_file_size(option: str, path: Path) -> int:
    """``path`` is a regular file this process can open for reading: its size in bytes.
    Otherwise one ``error:`` line naming ``option`` and the path (exit 2)."""
    if not path.is_file():
        bad_option(option, f"{path} is not a file")
    try:
        size = path.stat().st_size
        with path.open("rb"):
            pass
    except OSError as err:
        bad_option(option, f"cannot read {path}: {err.strerror or err}")
    return size


def output_path_callback(
    ctx: typer.Context, param: typer.CallbackParam, value: Path | None
) -> Path | None:
    """A typer callback: check an output-file option with :func:`check_output_path` while the
    command line is parsed, before any work starts."""
    if value is None or ctx.resilient_parsing:
        return value
    return check_output_path(max(param.opts, key=len), value)


def output_file_option(option: str, help: str) -> Any:
    """A typer option naming a file the command writes (``--trace-out FILE``...), declared
    with :func:`output_path_callback`, so no such option can go without the path check."""
    return typer.Option(option, callback=output_path_callback, metavar="FILE", help=help)


def write_output(option: str, path: Path, text: str) -> None:
    """Write ``text`` to the file an option names; an OS error is the user's (exit 2)."""
    try:
        path.write_text(text)
    except OSError as err:
        bad_option(option, f"cannot write {path}: {err.strerror or err}")
