"""Parsing command-line values: integers in any base, bounded lists and ranges of them, VP-index
lists. Every mistake is reported through :func:`vpindex.cli.errors.bad_option`, naming the option
and quoting the value."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import typer

from vpindex.abi import MAX_VP_INDEX
from vpindex.cli.errors import bad_option, printable
from vpindex.defaults import FLUSH_PROTOCOLS

__all__ = [
    "choice",
    "float_in",
    "int_in",
    "parse_int",
    "parse_int_list",
    "parse_vp_indexes",
    "remote_flush_option",
]


def parse_int(text: str, option: str) -> int:
    """``text`` as an int in decimal, 0x hex, 0o octal or 0b binary."""
    try:
        return int(text.replace("_", ""), 0)
    except ValueError:
        bad_option(option, f"{printable(text)!r} is not an integer (e.g. 42 or 0x2a)")


def parse_int_list(text: str, option: str, *, max_items: int = MAX_VP_INDEX) -> list[int]:
    """A comma-separated list of ints and inclusive ranges: ``"0,2,65"`` or ``"0-3,64"``; at
    most ``max_items`` values; never empty."""
    out: list[int] = []
    for raw in text.split(","):
        part = raw.strip()
        if not part:
            continue
        if "-" in part[1:]:
            lo_text, hi_text = part.split("-", 1)
            lo, hi = parse_int(lo_text, option), parse_int(hi_text, option)
            if hi < lo:
                bad_option(option, f"empty range {printable(part)!r}")
            if hi - lo + 1 + len(out) > max_items:
                bad_option(option, f"more than {max_items} values in {printable(text)!r}")
            out.extend(range(lo, hi + 1))
        else:
            out.append(parse_int(part, option))
        if len(out) > max_items:
            bad_option(option, f"more than {max_items} values in {printable(text)!r}")
    if not out:
        bad_option(option, f"no values in {printable(text)!r}")
    return out


def parse_vp_indexes(text: str, option: str = "--vp-indexes") -> list[int]:
    """The VP index of each vCPU in order: distinct, each in [0, MAX_VP_INDEX). The same words
    for the same mistake whichever command or backend reads them."""
    vps = parse_int_list(text, option)
    bad = [v for v in vps if not 0 <= v < MAX_VP_INDEX]
    if bad:
        bad_option(option, f"VP index {bad[0]} is outside [0, {MAX_VP_INDEX})")
    seen: dict[int, int] = {}
    for cpu, vp in enumerate(vps):
        if vp in seen:
            bad_option(option, f"VP index {vp} is given to both vCPU {seen[vp]} and vCPU {cpu}")
        seen[vp] = cpu
    return vps


def choice(allowed: Sequence[str], option: str) -> Callable[[str], str]:
    """A typer ``parser`` accepting one of ``allowed`` (the library's own tuple of names, so the
    choices are defined once)."""

    def parse(value: str) -> str:
        if value not in allowed:
            bad_option(option, f"{printable(value)!r} is not one of {', '.join(allowed)}")
        return value

    return parse


def int_in(lo: int, hi: int | None, option: str) -> Callable[[str | int], int]:
    """A typer ``parser``: an integer (any base) in ``lo..hi`` (no upper bound if None); the
    bound is quoted in the error."""

    def parse(value: str | int) -> int:
        value = str(value)  # typer also passes the (int) default through the parser
        n = parse_int(value, option)
        if n < lo or (hi is not None and n > hi):
            bound = f"{lo}..{hi}" if hi is not None else f">= {lo}"
            bad_option(option, f"{printable(value)} is outside {bound}")
        return n

    return parse


def float_in(lo: float, hi: float, option: str) -> Callable[[str | float], float]:
    """A typer ``parser``: a number in ``lo..hi``, quoted in the error."""

    def parse(value: str | float) -> float:
        value = str(value)  # typer also passes the default through the parser
        try:
            x = float(value)
        except ValueError:
            bad_option(option, f"{printable(value)!r} is not a number")
        if not lo <= x <= hi:  # also refuses nan
            bad_option(option, f"{printable(value)} is outside {lo:g}..{hi:g}")
        return x

    return parse


def remote_flush_option(prefix: str = "") -> Any:
    """``--remote-flush NAME``: the KVM backend's remote-flush protocol, one of
    :data:`vpindex.defaults.FLUSH_PROTOCOLS` (the same option on every command that has it)."""
    text = (
        "what a PV flush waits for before it returns: fence (every target out of guest mode, "
        "via membarrier; the default where the host has it) or confirm (each target's VMM "
        "thread has flushed)."
    )
    return typer.Option(
        "--remote-flush",
        parser=choice(FLUSH_PROTOCOLS, "--remote-flush"),
        metavar="NAME",
        help=f"{prefix}{text}" if prefix else text[0].upper() + text[1:],
    )
