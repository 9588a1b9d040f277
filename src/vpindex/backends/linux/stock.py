"""A stock distribution kernel: Debian's cloud kernel binary, unmodified, as an ELF vmlinux.

:func:`fetch_stock_kernel` downloads the image package with ``apt-get download`` (no root
needed), takes ``boot/vmlinuz-*`` out of the ``.deb`` (an ``ar`` archive holding
``data.tar.*``), cuts the compressed kernel out of the bzImage and decompresses it with the
``zstd`` tool (gzip and xz with the standard library), and caches the result under
``<cache>/stock/<package>/vmlinux``.

The bzImage layout (Documentation/arch/x86/boot.rst, boot protocol 2.08+): the real-mode
setup is ``setup_sects + 1`` sectors of 512 bytes (``setup_sects`` at 0x1F1; 0 means 4); the
protected-mode part follows; ``payload_offset`` (u32 at 0x248) and ``payload_length`` (u32 at
0x24C) locate the compressed kernel inside it. The build appends the uncompressed size as 4
bytes after the compressed stream, which is dropped before decompressing.

This kernel has no MP-table parser: the VMM must give it ACPI tables (see the issue and
docs). Its image package carries no symbols.
"""

from __future__ import annotations

import gzip
import io
import json
import lzma
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vpindex.backends.linux.build import BuildError, ProgressFn, SourceError, cache_root

__all__ = [
    "META_PACKAGE",
    "StockKernel",
    "ar_members",
    "bzimage_payload",
    "decompress_payload",
    "fetch_stock_kernel",
    "vmlinuz_from_deb",
]

META_PACKAGE = "linux-image-6.12-cloud-amd64"
"""Debian's meta-package whose dependency names the newest 6.12 cloud image package."""

_AR_MAGIC = b"!<arch>\n"
_AR_HEADER = 60
_SETUP_SECTS = 0x1F1
_HDRS = 0x202
_VERSION = 0x206
_PAYLOAD_OFFSET = 0x248
_PAYLOAD_LENGTH = 0x24C
_MIN_PROTOCOL_WITH_PAYLOAD = 0x0208
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_GZIP_MAGIC = b"\x1f\x8b"
_XZ_MAGIC = b"\xfd7zXZ\x00"
_MAX_VMLINUX = 512 << 20
_PACKAGE = re.compile(r"linux-image-[0-9][A-Za-z0-9.+~-]*")


@dataclass(frozen=True)
class StockKernel:
    """A distribution kernel, decompressed to the ELF vmlinux a VMM loads."""

    vmlinux: Path
    package: str
    kernel_version: str
    """The ``vmlinuz-<version>`` suffix, e.g. ``6.12.117+deb12-cloud-amd64``."""
    cache_hit: bool

    def as_json(self) -> dict[str, Any]:
        """Paths and versions for ``vpindex linux fetch --json``."""
        return {
            "vmlinux": str(self.vmlinux),
            "package": self.package,
            "kernel_version": self.kernel_version,
            "cache_hit": self.cache_hit,
        }


def ar_members(data: bytes) -> Iterator[tuple[str, bytes]]:
    """The (name, bytes) members of an ``ar`` archive such as a ``.deb``. Raises BuildError
    on anything malformed."""
    if not data.startswith(_AR_MAGIC):
        raise BuildError("not an ar archive (.deb)")
    pos = len(_AR_MAGIC)
    while pos < len(data):
        header = data[pos : pos + _AR_HEADER]
        if len(header) < _AR_HEADER or header[58:60] != b"`\n":
            raise BuildError(f"ar archive: bad member header at offset {pos}")
        name = header[:16].decode("ascii", "replace").strip().rstrip("/")
        try:
            size = int(header[48:58].decode("ascii").strip())
        except ValueError:
            raise BuildError(f"ar archive: bad size for member {name!r}") from None
        start = pos + _AR_HEADER
        if size < 0 or start + size > len(data):
            raise BuildError(f"ar archive: member {name!r} runs past the end")
        yield name, data[start : start + size]
        pos = start + size + (size & 1)


def _open_tar(name: str, blob: bytes) -> tarfile.TarFile:
    if name.endswith(".zst"):
        blob = _zstd(blob)
        return tarfile.open(fileobj=io.BytesIO(blob), mode="r:")
    return tarfile.open(fileobj=io.BytesIO(blob), mode="r:*")


def vmlinuz_from_deb(deb: bytes) -> tuple[str, bytes]:
    """``(version, bzImage)``: the ``boot/vmlinuz-<version>`` file of a kernel image ``.deb``."""
    for name, blob in ar_members(deb):
        if not name.startswith("data.tar"):
            continue
        try:
            with _open_tar(name, blob) as tar:
                for member in tar:
                    m = re.fullmatch(r"(?:\./)?boot/vmlinuz-(.+)", member.name)
                    if m and member.isfile():
                        f = tar.extractfile(member)
                        if f is not None:
                            return m.group(1), f.read()
        except (tarfile.TarError, OSError, EOFError, lzma.LZMAError) as err:
            raise BuildError(f".deb {name}: {err}") from None
        raise BuildError(".deb holds no boot/vmlinuz-*")
    raise BuildError(".deb holds no data.tar.*")


def bzimage_payload(image: bytes) -> bytes:
    """The compressed kernel inside a bzImage, without the 4-byte size trailer. Raises
    BuildError for a file that is not a bzImage of boot protocol 2.08 or later."""
    if len(image) < 0x260 or image[_HDRS : _HDRS + 4] != b"HdrS":
        raise BuildError("not a bzImage (no HdrS setup header)")
    protocol = int.from_bytes(image[_VERSION : _VERSION + 2], "little")
    if protocol < _MIN_PROTOCOL_WITH_PAYLOAD:
        raise BuildError(f"bzImage boot protocol {protocol:#x} has no payload fields")
    setup_sects = image[_SETUP_SECTS] or 4
    start = (setup_sects + 1) * 512
    offset = int.from_bytes(image[_PAYLOAD_OFFSET : _PAYLOAD_OFFSET + 4], "little")
    length = int.from_bytes(image[_PAYLOAD_LENGTH : _PAYLOAD_LENGTH + 4], "little")
    if length <= 4 or start + offset + length > len(image):
        raise BuildError(f"bzImage payload {offset:#x}+{length:#x} lies outside the file")
    return image[start + offset : start + offset + length - 4]


def _zstd(blob: bytes) -> bytes:
    if shutil.which("zstd") is None:
        raise SourceError("the zstd tool is missing: run `apt-get install zstd` as root")
    done = subprocess.run(
        ["zstd", "-d", "-q", "--long=31", "-c"],
        input=blob,
        capture_output=True,
        timeout=300,
        check=False,
    )
    if done.returncode != 0:
        raise BuildError(f"zstd -d failed: {done.stderr.decode(errors='replace').strip()[:200]}")
    return done.stdout


def decompress_payload(payload: bytes) -> bytes:
    """Decompress a bzImage payload (zstd, gzip or xz, told apart by their magic numbers)."""
    try:
        if payload.startswith(_ZSTD_MAGIC):
            out = _zstd(payload)
        elif payload.startswith(_GZIP_MAGIC):
            out = gzip.decompress(payload)
        elif payload.startswith(_XZ_MAGIC):
            out = lzma.decompress(payload, format=lzma.FORMAT_XZ)
        else:
            raise BuildError(f"unknown payload compression (magic {payload[:6].hex()})")
    except (OSError, EOFError, lzma.LZMAError) as err:
        raise BuildError(f"cannot decompress the kernel payload: {err}") from None
    if not out.startswith(b"\x7fELF\x02") or len(out) > _MAX_VMLINUX:
        raise BuildError("the decompressed payload is not a 64-bit ELF vmlinux")
    return out


def _resolve_package(timeout_s: float) -> str:
    try:
        done = subprocess.run(
            ["apt-cache", "depends", META_PACKAGE],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        raise SourceError(f"apt-cache depends {META_PACKAGE}: {err}") from None
    for line in done.stdout.splitlines():
        m = re.match(r"\s*Depends:\s*(linux-image-\S+)", line)
        if m:
            return m.group(1)
    raise SourceError(
        f"apt-cache knows no {META_PACKAGE} (run `apt-get update` as root, or pass --package)"
    )


def fetch_stock_kernel(
    package: str | None = None,
    progress: ProgressFn | None = None,
    *,
    cache: Path | None = None,
    timeout_s: float = 900.0,
) -> StockKernel:
    """Debian's cloud kernel as an ELF vmlinux, downloaded and unpacked once, then cached.

    ``package``: an image package name such as ``linux-image-6.12.117+deb12-cloud-amd64``;
    None for the one :data:`META_PACKAGE` depends on. Raises :class:`SourceError` when apt
    cannot name or download it (or zstd is missing), :class:`BuildError` when its contents are
    not what a kernel image package holds.
    """
    start = time.monotonic()

    def say(message: str) -> None:
        if progress is not None:
            progress(f"[{time.monotonic() - start:6.1f}s] stock: {message}")

    if package is not None and not _PACKAGE.fullmatch(package):
        raise SourceError(f"--package {package!r}: want a linux-image-... package name")
    name = package or _resolve_package(timeout_s)
    out = (cache or cache_root()) / "stock" / name
    try:
        meta = json.loads((out / "build.json").read_text())
        if (out / "vmlinux").is_file() and isinstance(meta, dict):
            say(f"cached: {out / 'vmlinux'}")
            return StockKernel(out / "vmlinux", name, str(meta.get("kernel_version")), True)
    except (OSError, ValueError):
        pass
    if shutil.which("apt-get") is None:
        raise SourceError("apt-get is missing: download the .deb yourself")
    with tempfile.TemporaryDirectory(prefix="vpindex-stock-") as tmp:
        say(f"apt-get download {name}")
        try:
            done = subprocess.run(
                ["apt-get", "download", name],
                cwd=tmp,
                capture_output=True,
                text=True,
                timeout=timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise BuildError(f"apt-get download {name} timed out") from None
        debs = sorted(Path(tmp).glob("*.deb"))
        if done.returncode != 0 or not debs:
            last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no .deb"]
            raise SourceError(f"apt-get download {name} failed: {last[0]}")
        say(f"unpacking {debs[0].name} ({debs[0].stat().st_size:,} bytes)")
        version, image = vmlinuz_from_deb(debs[0].read_bytes())
    say(f"vmlinuz-{version}: {len(image):,} bytes; decompressing its payload")
    vmlinux = decompress_payload(bzimage_payload(image))
    out.mkdir(parents=True, exist_ok=True)
    (out / ".vmlinux.tmp").write_bytes(vmlinux)
    (out / ".vmlinux.tmp").replace(out / "vmlinux")
    meta = {"kernel_version": version, "package": name, "vmlinux_bytes": len(vmlinux)}
    (out / "build.json").write_text(json.dumps(meta, indent=1))
    say(f"vmlinux {len(vmlinux):,} bytes: {out / 'vmlinux'}")
    return StockKernel(out / "vmlinux", name, version, False)
