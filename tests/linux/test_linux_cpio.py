"""The initramfs writer against the newc format, read back by an independent parser here and by
the system's cpio(1)."""

from __future__ import annotations

import shutil
import stat
import subprocess
from dataclasses import dataclass

import pytest

from vpindex.backends.linux import cpio
from vpindex.backends.linux.build import initramfs_entries


@dataclass
class Member:
    name: str
    ino: int
    mode: int
    nlink: int
    size: int
    rdev: tuple[int, int]
    data: bytes
    offset: int


def parse_newc(blob: bytes) -> list[Member]:
    """A reader written from the format description (buffer-format.rst), not from the writer."""
    out, pos = [], 0
    while True:
        assert pos % 4 == 0, f"header at {pos} is not 4-byte aligned"
        head = blob[pos : pos + 110]
        assert head[:6] == b"070701", head[:6]
        fields = [int(head[6 + 8 * i : 14 + 8 * i], 16) for i in range(13)]
        ino, mode, _uid, _gid, nlink, _mtime, size, _maj, _min, rmaj, rmin, namesize, check = fields
        assert check == 0
        name_at = pos + 110
        raw_name = blob[name_at : name_at + namesize]
        assert raw_name.endswith(b"\0") and b"\0" not in raw_name[:-1]
        name = raw_name[:-1].decode()
        data_at = (name_at + namesize + 3) & ~3
        data = blob[data_at : data_at + size]
        assert len(data) == size
        out.append(Member(name, ino, mode, nlink, size, (rmaj, rmin), data, pos))
        pos = (data_at + size + 3) & ~3
        if name == "TRAILER!!!":
            assert pos == len(blob), "bytes after the trailer"
            return out


def test_members_read_back_with_their_types_data_and_device_numbers() -> None:
    payload = b"\x7fELF" + bytes(range(256)) * 3 + b"odd"
    blob = cpio.write_newc(
        [
            cpio.directory("dev"),
            cpio.char_device("dev/console", 5, 1),
            cpio.regular_file("init", payload, 0o755),
            cpio.regular_file("empty", b""),
        ]
    )
    members = parse_newc(blob)
    assert [m.name for m in members] == ["dev", "dev/console", "init", "empty", "TRAILER!!!"]
    dev, console, init, empty, _ = members
    assert stat.S_ISDIR(dev.mode) and stat.S_IMODE(dev.mode) == 0o755
    assert stat.S_ISCHR(console.mode) and console.rdev == (5, 1) and console.size == 0
    assert stat.S_ISREG(init.mode) and stat.S_IMODE(init.mode) == 0o755 and init.data == payload
    assert empty.size == 0
    assert len({m.ino for m in members[:-1]}) == 4, "inode numbers must differ"


@pytest.mark.parametrize("length", [0, 1, 2, 3, 4, 5, 7, 8])
def test_every_name_and_data_length_keeps_the_next_header_aligned(length: int) -> None:
    name = "n" * (length + 1)
    blob = cpio.write_newc([cpio.regular_file(name, b"x" * length), cpio.directory("d")])
    names = [m.name for m in parse_newc(blob)]
    assert names == [name, "d", "TRAILER!!!"]


def test_the_same_entries_give_the_same_bytes() -> None:
    entries = initramfs_entries(b"binary")
    assert cpio.write_newc(entries) == cpio.write_newc(entries)


@pytest.mark.parametrize(
    "entries",
    [
        [cpio.regular_file("", b"")],
        [cpio.regular_file("/abs", b"")],
        [cpio.directory("a"), cpio.directory("a")],
        [cpio.Entry("dir", stat.S_IFDIR | 0o755, b"data")],
        [cpio.char_device("c", 2**32, 0)],
    ],
    ids=["empty-name", "absolute", "twice", "data-on-dir", "huge-major"],
)
def test_malformed_members_are_refused(entries: list[cpio.Entry]) -> None:
    with pytest.raises(ValueError):
        cpio.write_newc(entries)


def test_the_guest_initramfs_has_the_nodes_init_needs() -> None:
    members = {m.name: m for m in parse_newc(cpio.write_newc(initramfs_entries(b"ELF")))}
    assert members["dev/console"].rdev == (5, 1)
    assert members["dev/kmsg"].rdev == (1, 11)
    assert stat.S_ISDIR(members["proc"].mode)
    assert members["init"].data == b"ELF" and members["init"].mode & 0o111


@pytest.mark.skipif(shutil.which("cpio") is None, reason="cpio(1) is not installed")
def test_system_cpio_lists_the_archive() -> None:
    blob = cpio.write_newc(initramfs_entries(b"#!/bin/true\n"))
    listing = subprocess.run(
        ["cpio", "-itv", "--quiet"], input=blob, capture_output=True, check=True
    ).stdout.decode()
    lines = listing.splitlines()
    assert [line.split()[-1] for line in lines] == [
        "dev",
        "dev/console",
        "dev/kmsg",
        "proc",
        "init",
    ]
    assert lines[1].startswith("crw-------") and "5," in lines[1]
    assert lines[4].startswith("-rwxr-xr-x")


def test_control_the_reader_rejects_a_misaligned_archive() -> None:
    blob = cpio.write_newc([cpio.regular_file("ab", b"xyz"), cpio.directory("d")])
    broken = blob[:113] + blob[114:]  # drop one byte of the first member's name padding
    with pytest.raises(AssertionError):
        parse_newc(broken)
