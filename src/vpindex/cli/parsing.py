"""Parsing command-line values: integers in any base, lists and ranges of them."""

from __future__ import annotations

import typer

__all__ = ["parse_int", "parse_int_list"]


def parse_int(text: str, what: str) -> int:
    """``text`` as an int in decimal, 0x hex, 0o octal or 0b binary; BadParameter otherwise."""
    try:
        return int(text.replace("_", ""), 0)
    except ValueError:
        raise typer.BadParameter(
            f"{what} must be an integer (e.g. 42 or 0x2a), got {text!r}"
        ) from None


def parse_int_list(text: str, what: str) -> list[int]:
    """A comma-separated list of ints and inclusive ranges: ``"0,2,65"`` or ``"0-3,64"``."""
    out: list[int] = []
    for raw in text.split(","):
        part = raw.strip()
        if not part:
            continue
        if "-" in part[1:]:
            lo_text, hi_text = part.split("-", 1)
            lo, hi = parse_int(lo_text, what), parse_int(hi_text, what)
            if hi < lo:
                raise typer.BadParameter(f"{what}: empty range {part!r}")
            out.extend(range(lo, hi + 1))
        else:
            out.append(parse_int(part, what))
    if not out:
        raise typer.BadParameter(f"{what} is empty")
    return out
