"""A writer for the cpio "newc" format (the ``070701`` ASCII header), the format Linux unpacks
as an initramfs (Documentation/driver-api/early-userspace/buffer-format.rst).

Each entry is a 110-byte header of ``070701`` and thirteen 8-digit hex fields (ino, mode, uid,
gid, nlink, mtime, filesize, devmajor, devminor, rdevmajor, rdevminor, namesize, check), then
the NUL-terminated name padded to a multiple of 4 bytes, then the data padded likewise. The
archive ends with an entry named ``TRAILER!!!``. Output is deterministic: inode numbers count
up from 1, owners are root, and every mtime is 0, so the same entries give the same bytes.
"""

from __future__ import annotations

import stat
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "MAGIC",
    "TRAILER",
    "Entry",
    "char_device",
    "directory",
    "regular_file",
    "write_newc",
]

MAGIC = b"070701"
TRAILER = "TRAILER!!!"
_FIELD_MAX = 0xFFFF_FFFF


@dataclass(frozen=True)
class Entry:
    """One archive member: ``name`` relative to the root (no leading ``/``), the full
    ``st_mode`` (type and permission bits), the file ``data`` (regular files only) and, for a
    device node, its major and minor number."""

    name: str
    mode: int
    data: bytes = b""
    rdev_major: int = 0
    rdev_minor: int = 0


def directory(name: str, perm: int = 0o755) -> Entry:
    """A directory entry."""
    return Entry(name, stat.S_IFDIR | perm)


def regular_file(name: str, data: bytes, perm: int = 0o644) -> Entry:
    """A regular file holding ``data``."""
    return Entry(name, stat.S_IFREG | perm, data)


def char_device(name: str, major: int, minor: int, perm: int = 0o600) -> Entry:
    """A character device node (e.g. ``dev/console``, 5:1)."""
    return Entry(name, stat.S_IFCHR | perm, b"", major, minor)


def _pad4(n: int) -> bytes:
    return b"\0" * (-n % 4)


def _header(ino: int, entry: Entry, nlink: int, namesize: int) -> bytes:
    fields = (
        ino,
        entry.mode,
        0,  # uid
        0,  # gid
        nlink,
        0,  # mtime
        len(entry.data),
        0,  # devmajor
        0,  # devminor
        entry.rdev_major,
        entry.rdev_minor,
        namesize,
        0,  # check (only the 070702 "crc" variant uses it)
    )
    for value in fields:
        if not 0 <= value <= _FIELD_MAX:
            raise ValueError(f"cpio field out of range for {entry.name!r}: {value}")
    return MAGIC + b"".join(b"%08X" % value for value in fields)


def write_newc(entries: Iterable[Entry]) -> bytes:
    """The newc archive of ``entries`` in the given order, plus the trailer.

    Parents must come before their children (the kernel creates each path as it reads it).
    Raises ValueError for an empty, absolute or NUL-containing name, a name given twice, data on
    anything but a regular file, or a size that does not fit the format's 32-bit fields.
    """
    out = bytearray()
    seen: set[str] = set()
    ino = 0
    for entry in [*entries, Entry(TRAILER, 0)]:
        name = entry.name
        if not name or name.startswith("/") or "\0" in name:
            raise ValueError(f"bad cpio member name {name!r}")
        if name in seen:
            raise ValueError(f"cpio member {name!r} given twice")
        seen.add(name)
        if entry.data and not stat.S_ISREG(entry.mode):
            raise ValueError(f"cpio member {name!r} has data but is not a regular file")
        is_trailer = name == TRAILER
        ino = 0 if is_trailer else ino + 1
        nlink = 2 if stat.S_ISDIR(entry.mode) else 1
        encoded = name.encode() + b"\0"
        header = _header(ino, entry, nlink, len(encoded))
        out += header + encoded + _pad4(len(header) + len(encoded))
        out += entry.data + _pad4(len(entry.data))
    return bytes(out)
