"""A stock distribution kernel: Debian's cloud kernel binary, unmodified, as an ELF vmlinux.

:func:`fetch_stock_kernel` downloads the image package with ``apt-get download`` (no root
needed), takes ``boot/vmlinuz-*`` out of the ``.deb`` (an ``ar`` archive holding
``data.tar.*``), cuts the compressed kernel out of the bzImage and decompresses it with the
``zstd`` tool (gzip and xz with the standard library), and caches the result under
``<cache>/stock/<package>/vmlinux``. From the same package it keeps the kernel's
``boot/config-*`` and, when that config builds the msr driver as a module (``CONFIG_X86_MSR=m``,
as Debian's does), ``lib/modules/<version>/kernel/arch/x86/kernel/msr.ko*`` decompressed:
``/init`` reads each CPU's VP index through that driver, so :func:`stock_initramfs` packs the
module into the initramfs (at :data:`~vpindex.backends.linux.workload.MSR_MODULE`) next to the
project's ``/init``, which loads it.

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
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any

from vpindex.backends.linux import cpio
from vpindex.backends.linux.build import (
    BuildError,
    InitramfsBuild,
    ProgressFn,
    SourceError,
    cache_root,
    initramfs_entries,
    write_atomic,
)
from vpindex.backends.linux.workload import MSR_MODULE

__all__ = [
    "META_PACKAGE",
    "ImagePackage",
    "StockKernel",
    "ar_members",
    "bzimage_payload",
    "cached_stock_kernel",
    "decompress_payload",
    "fetch_stock_kernel",
    "msr_driver",
    "stock_initramfs",
    "unpack_image_deb",
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
_MAX_MODULE = 16 << 20
_RECIPE = 2
"""Bumped when the cached files change (2: the config and the msr module are kept too)."""
_MSR_MODULE_FILE = re.compile(
    r"(?:\./)?lib/modules/[^/]+/kernel/arch/x86/kernel/msr\.ko(\.xz|\.zst|\.gz)?"
)
_PACKAGE = re.compile(r"linux-image-[0-9][A-Za-z0-9.+~-]*")


@dataclass(frozen=True)
class StockKernel:
    """A distribution kernel, decompressed to the ELF vmlinux a VMM loads."""

    vmlinux: Path
    package: str
    kernel_version: str
    """The ``vmlinuz-<version>`` suffix, e.g. ``6.12.117+deb12-cloud-amd64``."""
    cache_hit: bool
    config: Path
    """The package's ``boot/config-<version>``."""
    msr_module: Path | None
    """The msr driver module (an ELF ``.ko``), or None when the kernel has the driver built in."""

    def as_json(self) -> dict[str, Any]:
        """Paths and versions for ``vpindex linux fetch --json``."""
        return {
            "vmlinux": str(self.vmlinux),
            "package": self.package,
            "kernel_version": self.kernel_version,
            "config": str(self.config),
            "msr_module": str(self.msr_module) if self.msr_module is not None else None,
            "cache_hit": self.cache_hit,
        }


@dataclass(frozen=True)
class ImagePackage:
    """What the VMM needs from a kernel image ``.deb``."""

    version: str
    """The ``boot/vmlinuz-<version>`` suffix."""
    vmlinuz: bytes
    """The bzImage."""
    config: bytes | None
    """``boot/config-<version>``, if the package has it."""
    msr_module: bytes | None
    """``msr.ko`` decompressed (an ELF relocatable object), if the package has it."""


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


def unpack_image_deb(deb: bytes) -> ImagePackage:
    """The bzImage, config and msr module of a kernel image ``.deb``. Raises BuildError when
    the archive is malformed or holds no ``boot/vmlinuz-*``."""
    for name, blob in ar_members(deb):
        if not name.startswith("data.tar"):
            continue
        files: dict[str, bytes] = {}
        module: tuple[str, bytes] | None = None
        version = None
        try:
            with _open_tar(name, blob) as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    path = member.name.removeprefix("./")
                    boot = re.fullmatch(r"boot/(vmlinuz|config)-(.+)", path)
                    found = _MSR_MODULE_FILE.fullmatch(member.name)
                    if boot is None and found is None:
                        continue
                    f = tar.extractfile(member)
                    if f is None:
                        continue
                    if boot is not None:
                        files[boot.group(1)] = f.read()
                        version = boot.group(2) if boot.group(1) == "vmlinuz" else version
                    elif found is not None and member.size <= _MAX_MODULE:
                        module = (found.group(1) or "", f.read())
        except (tarfile.TarError, OSError, EOFError, lzma.LZMAError) as err:
            raise BuildError(f".deb {name}: {err}") from None
        if "vmlinuz" not in files or version is None:
            raise BuildError(".deb holds no boot/vmlinuz-*")
        return ImagePackage(
            version,
            files["vmlinuz"],
            files.get("config"),
            _decompress_module(*module) if module is not None else None,
        )
    raise BuildError(".deb holds no data.tar.*")


def vmlinuz_from_deb(deb: bytes) -> tuple[str, bytes]:
    """``(version, bzImage)``: the ``boot/vmlinuz-<version>`` file of a kernel image ``.deb``."""
    package = unpack_image_deb(deb)
    return package.version, package.vmlinuz


def _decompress_module(suffix: str, blob: bytes) -> bytes:
    """A ``.ko``, ``.ko.xz``, ``.ko.zst`` or ``.ko.gz`` as the ELF object the kernel loads
    (decompressed here: in the guest that would run as emulated kernel code)."""
    try:
        if suffix == ".xz":
            out = lzma.decompress(blob, format=lzma.FORMAT_XZ)
        elif suffix == ".zst":
            out = _zstd(blob)
        elif suffix == ".gz":
            out = gzip.decompress(blob)
        else:
            out = blob
    except (OSError, EOFError, lzma.LZMAError) as err:
        raise BuildError(f"cannot decompress msr.ko{suffix}: {err}") from None
    if not out.startswith(b"\x7fELF\x02") or len(out) > _MAX_MODULE:
        raise BuildError(f"msr.ko{suffix} is not a 64-bit ELF object")
    return out


def msr_driver(config: bytes) -> str:
    """How a kernel ``.config`` builds the msr driver: ``"y"`` (built in), ``"m"`` (a module)
    or ``"n"`` (not at all)."""
    m = re.search(rb"^CONFIG_X86_MSR=([ym])$", config, re.MULTILINE)
    return m.group(1).decode() if m else "n"


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


def _cached(out: Path, name: str) -> StockKernel | None:
    try:
        meta = json.loads((out / "build.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("recipe") != _RECIPE:
        return None
    module = out / "msr.ko" if meta.get("msr_driver") == "m" else None
    needed = [out / "vmlinux", out / "config", *([module] if module is not None else [])]
    if not all(f.is_file() for f in needed):
        return None
    return StockKernel(
        out / "vmlinux", name, str(meta.get("kernel_version")), True, out / "config", module
    )


def cached_stock_kernel(
    package: str | None = None, *, cache: Path | None = None, timeout_s: float = 60.0
) -> StockKernel | None:
    """The fetched kernel if the cache holds it whole, else None; nothing is downloaded. With
    ``package`` None it is the package apt-cache names, or, when apt cannot name one (no
    package lists), the last cached one in name order. Raises :class:`SourceError` for a
    ``package`` that is not an image package name."""
    root = (cache or cache_root()) / "stock"
    try:
        name = _package_name(package, timeout_s)
    except SourceError:
        if package is not None:
            raise
        found = (_cached(d, d.name) for d in sorted(root.glob("linux-image-*"), reverse=True))
        return next((k for k in found if k is not None), None)
    return _cached(root / name, name)


def _package_name(package: str | None, timeout_s: float) -> str:
    if package is not None and not _PACKAGE.fullmatch(package):
        raise SourceError(f"--package {package!r}: want a linux-image-... package name")
    return package or _resolve_package(timeout_s)


def fetch_stock_kernel(
    package: str | None = None,
    progress: ProgressFn | None = None,
    *,
    cache: Path | None = None,
    timeout_s: float = 900.0,
) -> StockKernel:
    """Debian's cloud kernel as an ELF vmlinux, with its config and msr module, downloaded and
    unpacked once, then cached.

    ``package``: an image package name such as ``linux-image-6.12.117+deb12-cloud-amd64``;
    None for the one :data:`META_PACKAGE` depends on. Raises :class:`SourceError` when apt
    cannot name or download it (or zstd is missing), :class:`BuildError` when its contents are
    not what a kernel image package holds (no config, or ``CONFIG_X86_MSR=m`` and no module).
    """
    start = time.monotonic()

    def say(message: str) -> None:
        if progress is not None:
            progress(f"[{time.monotonic() - start:6.1f}s] stock: {message}")

    name = _package_name(package, timeout_s)
    out = (cache or cache_root()) / "stock" / name
    cached = _cached(out, name)
    if cached is not None:
        say(f"cached: {cached.vmlinux}")
        return cached
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
        image = unpack_image_deb(debs[0].read_bytes())
    if image.config is None:
        raise BuildError(f"{name} holds no boot/config-{image.version}")
    driver = msr_driver(image.config)
    if driver == "m" and image.msr_module is None:
        raise BuildError(f"{name} builds the msr driver as a module but holds no msr.ko")
    if driver == "n":
        raise BuildError(
            f"{name} has no msr driver (CONFIG_X86_MSR): /init could not read VP indexes"
        )
    say(f"vmlinuz-{image.version}: {len(image.vmlinuz):,} bytes; decompressing its payload")
    vmlinux = decompress_payload(bzimage_payload(image.vmlinuz))
    write_atomic(out / "vmlinux", vmlinux)
    write_atomic(out / "config", image.config)
    if driver == "m" and image.msr_module is not None:
        write_atomic(out / "msr.ko", image.msr_module)
        say(f"msr.ko {len(image.msr_module):,} bytes (CONFIG_X86_MSR=m)")
    meta = {
        "kernel_version": image.version,
        "package": name,
        "vmlinux_bytes": len(vmlinux),
        "msr_driver": driver,
        "recipe": _RECIPE,
    }
    write_atomic(out / "build.json", json.dumps(meta, indent=1).encode())
    say(f"vmlinux {len(vmlinux):,} bytes: {out / 'vmlinux'}")
    kernel = _cached(out, name)
    if kernel is None:
        raise BuildError(f"the unpacked {name} did not land in {out}")
    return replace(kernel, cache_hit=False)


def stock_initramfs(kernel: StockKernel, init: InitramfsBuild) -> Path:
    """The initramfs for ``kernel``: the project's ``/init`` (from ``init``) and, when the
    kernel builds the msr driver as a module, that module at ``MSR_MODULE``. Written once next to
    the kernel (keyed by the ``/init`` build), uncompressed like the project's own."""
    path = kernel.vmlinux.parent / f"initramfs-{init.cache_dir.name}.cpio"
    if path.is_file():
        return path
    entries = initramfs_entries(init.init.read_bytes())
    if kernel.msr_module is not None:
        parents = PurePosixPath(MSR_MODULE.lstrip("/")).parents
        entries += [cpio.directory(str(d)) for d in reversed(parents) if str(d) != "."]
        entries.append(cpio.regular_file(MSR_MODULE.lstrip("/"), kernel.msr_module.read_bytes()))
    write_atomic(path, cpio.write_newc(entries))
    return path
