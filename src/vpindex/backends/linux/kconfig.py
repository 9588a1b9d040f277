"""Kconfig fragments: parse the repository's ``kernel.config``, merge it into a ``.config``, and
check afterwards that every option kept the value the fragment asked for.

A fragment uses the ``.config`` syntax itself: ``CONFIG_NAME=value`` sets an option and
``# CONFIG_NAME is not set`` turns it off; every other ``#`` line is a comment. ``make
olddefconfig`` silently drops a value whose dependencies are not met, which is why
:func:`unapplied` exists: the build reports each option that did not take effect.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources

__all__ = [
    "FRAGMENT_FILE",
    "Fragment",
    "FragmentError",
    "Mismatch",
    "load_fragment",
    "merge",
    "parse_dotconfig",
    "parse_fragment",
    "unapplied",
]

FRAGMENT_FILE = "kernel.config"
"""The fragment's file name inside this package."""

_SET = re.compile(r"CONFIG_([A-Za-z0-9_]+)=(.*)")
_UNSET = re.compile(r"# CONFIG_([A-Za-z0-9_]+) is not set")
_MAX_LINES = 100_000


class FragmentError(ValueError):
    """A fragment line that is neither an option, an "is not set" line, a comment nor blank."""


@dataclass(frozen=True)
class Fragment:
    """The options of a fragment in file order: name (without ``CONFIG_``) to value, where
    ``None`` means "is not set"; values are kept as written (``y``, ``16``, ``"text"``)."""

    options: tuple[tuple[str, str | None], ...]

    def as_dict(self) -> dict[str, str | None]:
        """Name -> value (``None`` for "is not set")."""
        return dict(self.options)

    def lines(self) -> list[str]:
        """The options as ``.config`` lines, comments dropped, in file order."""
        return [_line(name, value) for name, value in self.options]

    def digest(self) -> str:
        """SHA-256 (hex) of the options alone, so editing a comment does not change it."""
        return hashlib.sha256("\n".join(self.lines()).encode()).hexdigest()


@dataclass(frozen=True)
class Mismatch:
    """One fragment option that the final ``.config`` does not hold as asked."""

    name: str
    wanted: str | None
    got: str | None

    def __str__(self) -> str:
        def show(v: str | None) -> str:
            return "not set" if v is None else v

        return f"CONFIG_{self.name}: wanted {show(self.wanted)}, got {show(self.got)}"


def _line(name: str, value: str | None) -> str:
    return f"# CONFIG_{name} is not set" if value is None else f"CONFIG_{name}={value}"


def parse_fragment(text: str) -> Fragment:
    """Parse fragment text. Raises :class:`FragmentError` naming the line for anything that is
    not an option, an "is not set" line, a comment or blank, or for an option given twice."""
    seen: dict[str, int] = {}
    options: list[tuple[str, str | None]] = []
    for number, raw in enumerate(text.splitlines()[:_MAX_LINES], 1):
        line = raw.strip()
        if not line:
            continue
        if m := _UNSET.fullmatch(line):
            name, value = m.group(1), None
        elif line.startswith("#"):
            continue
        elif m := _SET.fullmatch(line):
            name, value = m.group(1), m.group(2).strip()
            if not value:
                raise FragmentError(f"line {number}: CONFIG_{name} has an empty value")
        else:
            raise FragmentError(f"line {number}: not a CONFIG_ option or comment: {line[:80]!r}")
        if name in seen:
            raise FragmentError(f"line {number}: CONFIG_{name} already given on line {seen[name]}")
        seen[name] = number
        options.append((name, value))
    return Fragment(tuple(options))


def load_fragment() -> Fragment:
    """The fragment shipped in this package (``kernel.config``)."""
    text = resources.files(__package__).joinpath(FRAGMENT_FILE).read_text(encoding="utf-8")
    return parse_fragment(text)


def parse_dotconfig(text: str) -> dict[str, str | None]:
    """A ``.config``'s options: name -> value, ``None`` for "is not set" lines; comments and
    anything else are ignored (``.config`` files are machine-written)."""
    out: dict[str, str | None] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if m := _UNSET.fullmatch(line):
            out[m.group(1)] = None
        elif m := _SET.fullmatch(line):
            out[m.group(1)] = m.group(2).strip()
    return out


def merge(dotconfig: str, fragment: Fragment) -> str:
    """``dotconfig`` with every line about a fragment option removed and the fragment's lines
    appended (what ``make olddefconfig`` then resolves)."""
    names = {name for name, _ in fragment.options}
    kept = []
    for raw in dotconfig.splitlines():
        line = raw.strip()
        m = _UNSET.fullmatch(line) or _SET.fullmatch(line)
        if m is None or m.group(1) not in names:
            kept.append(raw)
    kept.append("# vpindex fragment")
    kept.extend(fragment.lines())
    return "\n".join(kept) + "\n"


def unapplied(dotconfig: str, fragment: Fragment) -> list[Mismatch]:
    """The fragment options that ``dotconfig`` does not hold: a set option must have exactly
    the asked value; an "is not set" option must be absent, unset, or ``n``."""
    final = parse_dotconfig(dotconfig)
    out = []
    for name, wanted in fragment.options:
        got = final.get(name)
        ok = got in (None, "n") if wanted is None else got == wanted
        if not ok:
            out.append(Mismatch(name, wanted, got))
    return out
