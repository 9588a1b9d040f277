"""The stock-kernel path: a .deb (ar + data.tar) and a bzImage built here byte by byte, cut
and decompressed as the real cloud kernel is; its config and msr module kept in the cache and
packed into the stock initramfs; and, opt-in, the real download."""

from __future__ import annotations

import gzip
import io
import json
import lzma
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
from test_linux_cpio import parse_newc

from vpindex.backends.linux import stock
from vpindex.backends.linux.build import BuildError, InitramfsBuild
from vpindex.backends.linux.workload import MSR_MODULE

ELF = b"\x7fELF\x02\x01\x01" + bytes(57) + b"kernel text" * 100


def ar_archive(members: list[tuple[str, bytes]]) -> bytes:
    out = bytearray(b"!<arch>\n")
    for name, data in members:
        header = f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n"
        out += header.encode() + data + (b"\n" if len(data) % 2 else b"")
    return bytes(out)


def data_tar(files: dict[str, bytes], compression: str = "xz") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=f"w:{compression}") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def bzimage(payload: bytes, setup_sects: int = 1, protocol: int = 0x020F) -> bytes:
    """A bzImage: setup sectors with the header fields the cutter reads, then the payload
    (plus the 4-byte uncompressed-size trailer the kernel build appends) at an offset."""
    setup = bytearray((setup_sects + 1) * 512)
    setup[0x1F1] = setup_sects
    setup[0x202:0x206] = b"HdrS"
    setup[0x206:0x208] = protocol.to_bytes(2, "little")
    offset = 0x40
    blob = payload + len(ELF).to_bytes(4, "little")
    setup[0x248:0x24C] = offset.to_bytes(4, "little")
    setup[0x24C:0x250] = len(blob).to_bytes(4, "little")
    return bytes(setup) + b"\x90" * offset + blob + b"\0" * 100


def test_a_gzip_bzimage_in_a_deb_comes_out_as_the_elf() -> None:
    image = bzimage(gzip.compress(ELF))
    deb = ar_archive(
        [
            ("debian-binary", b"2.0\n"),
            ("control.tar.xz", data_tar({"./control": b"Package: x\n"})),
            (
                "data.tar.xz",
                data_tar({"./boot/config-6.12.0-t": b"", "./boot/vmlinuz-6.12.0-t": image}),
            ),
        ]
    )
    version, got = stock.vmlinuz_from_deb(deb)
    assert (version, got) == ("6.12.0-t", image)
    assert stock.decompress_payload(stock.bzimage_payload(got)) == ELF


def test_setup_sects_zero_means_four() -> None:
    image = bzimage(lzma.compress(ELF, format=lzma.FORMAT_XZ), setup_sects=0)
    image = image[:0x1F1] + b"\0" + image[0x1F2:]
    with pytest.raises(BuildError):  # zero means 4 sectors, so the payload is not where it was
        stock.decompress_payload(stock.bzimage_payload(image))
    image4 = bzimage(lzma.compress(ELF, format=lzma.FORMAT_XZ), setup_sects=4)
    image4 = image4[:0x1F1] + b"\0" + image4[0x1F2:]
    assert stock.decompress_payload(stock.bzimage_payload(image4)) == ELF


@pytest.mark.skipif(shutil.which("zstd") is None, reason="the zstd tool is not installed")
def test_a_zstd_payload_is_decompressed_with_the_zstd_tool() -> None:
    compressed = subprocess.run(
        ["zstd", "-q", "-c", "--long=27"], input=ELF, capture_output=True, check=True
    ).stdout
    assert stock.decompress_payload(stock.bzimage_payload(bzimage(compressed))) == ELF


@pytest.mark.parametrize(
    ("image", "needle"),
    [
        (b"MZ" + bytes(0x300), "no HdrS"),
        (bzimage(gzip.compress(ELF), protocol=0x0206), "protocol"),
        (bzimage(gzip.compress(ELF))[: 1024 + 0x40 + 10], "outside the file"),
    ],
    ids=["not-bzimage", "old-protocol", "truncated"],
)
def test_a_bad_bzimage_is_refused(image: bytes, needle: str) -> None:
    with pytest.raises(BuildError, match=needle):
        stock.bzimage_payload(image)


@pytest.mark.parametrize(
    ("payload", "needle"),
    [(b"\x00\x01garbage", "unknown payload"), (gzip.compress(b"not an elf"), "not a 64-bit ELF")],
)
def test_a_payload_that_is_not_a_kernel_is_refused(payload: bytes, needle: str) -> None:
    with pytest.raises(BuildError, match=needle):
        stock.decompress_payload(payload)


@pytest.mark.parametrize(
    "deb",
    [
        b"PK\x03\x04",
        ar_archive([("debian-binary", b"2.0\n")]),
        ar_archive([("data.tar.gz", data_tar({"./usr/share/doc": b""}, "gz"))]),
        ar_archive([("data.tar.xz", b"not xz")]),
        ar_archive([("data.tar.xz", b"x" * 10)])[:-5],
    ],
    ids=["not-ar", "no-data", "no-vmlinuz", "bad-tar", "truncated"],
)
def test_a_deb_without_a_kernel_is_refused(deb: bytes) -> None:
    with pytest.raises(BuildError):
        stock.vmlinuz_from_deb(deb)


@pytest.mark.skipif(
    os.environ.get("VPINDEX_STOCK_KERNEL") != "1",
    reason="downloads a 34 MB package: set VPINDEX_STOCK_KERNEL=1 to run",
)
def test_the_real_cloud_kernel_is_fetched_as_an_elf(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    kernel = stock.fetch_stock_kernel()
    header = kernel.vmlinux.read_bytes()[:32]
    assert header[:5] == b"\x7fELF\x02" and int.from_bytes(header[18:20], "little") == 62
    assert "cloud" in kernel.kernel_version
    assert stock.fetch_stock_kernel(kernel.package).cache_hit


# --- the msr module, the config, the cache and the stock initramfs -----------------------------

MODULE = b"\x7fELF\x02\x01\x01" + bytes(57) + b"msr module" * 50
CONFIG_M = b"# a kernel config\nCONFIG_X86_MSR=m\nCONFIG_DEVTMPFS=y\n"
VERSION = "6.12.0-t-cloud-amd64"
MODULE_PATH = f"./lib/modules/{VERSION}/kernel/arch/x86/kernel/msr.ko.xz"


def image_deb(config: bytes | None = CONFIG_M, module: bytes | None = MODULE) -> bytes:
    files = {f"./boot/vmlinuz-{VERSION}": bzimage(gzip.compress(ELF))}
    if config is not None:
        files[f"./boot/config-{VERSION}"] = config
    if module is not None:
        files[MODULE_PATH] = lzma.compress(module, format=lzma.FORMAT_XZ)
    files[f"./lib/modules/{VERSION}/kernel/drivers/powercap/intel_rapl_msr.ko.xz"] = b"other"
    return ar_archive([("debian-binary", b"2.0\n"), ("data.tar.xz", data_tar(files))])


def test_the_package_gives_its_config_and_the_msr_module_decompressed() -> None:
    image = stock.unpack_image_deb(image_deb())
    assert image.version == VERSION and image.config == CONFIG_M
    assert image.msr_module == MODULE  # xz taken off; intel_rapl_msr.ko is not msr.ko


@pytest.mark.parametrize(
    ("config", "driver"),
    [(CONFIG_M, "m"), (b"CONFIG_X86_MSR=y\n", "y"), (b"# CONFIG_X86_MSR is not set\n", "n")],
)
def test_the_config_says_how_the_msr_driver_is_built(config: bytes, driver: str) -> None:
    assert stock.msr_driver(config) == driver


def fake_apt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, deb: bytes) -> Path:
    """An ``apt-get`` on PATH whose ``download`` writes ``deb`` into its working directory and
    counts its calls."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (tmp_path / "pkg.deb").write_bytes(deb)
    script = bin_dir / "apt-get"
    script.write_text(
        f'#!/bin/sh\necho x >> "{tmp_path}/calls"\ncp "{tmp_path}/pkg.deb" "./$2_1_amd64.deb"\n'
    )
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return tmp_path / "calls"


def test_fetch_caches_kernel_config_and_module_and_builds_the_initramfs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = fake_apt(tmp_path, monkeypatch, image_deb())
    package = f"linux-image-{VERSION}"
    cache = tmp_path / "cache"
    kernel = stock.fetch_stock_kernel(package, cache=cache)
    assert not kernel.cache_hit and kernel.vmlinux.read_bytes() == ELF
    assert kernel.config.read_bytes() == CONFIG_M
    assert kernel.msr_module is not None and kernel.msr_module.read_bytes() == MODULE
    again = stock.fetch_stock_kernel(package, cache=cache)
    assert again.cache_hit and again.msr_module == kernel.msr_module
    assert stock.cached_stock_kernel(package, cache=cache) == again
    assert calls.read_text().count("x") == 1
    # A cache entry from before the module was kept (no recipe) is fetched again.
    meta = json.loads((kernel.vmlinux.parent / "build.json").read_text())
    del meta["recipe"]
    (kernel.vmlinux.parent / "build.json").write_text(json.dumps(meta))
    assert stock.cached_stock_kernel(package, cache=cache) is None
    assert not stock.fetch_stock_kernel(package, cache=cache).cache_hit
    assert calls.read_text().count("x") == 2

    init_dir = tmp_path / "init-0123456789abcdef"
    init_dir.mkdir()
    (init_dir / "init").write_bytes(b"\x7fELF init")
    init = InitramfsBuild(init_dir / "init", init_dir / "x.cpio", 9, 0, init_dir, True)
    members = {m.name: m for m in parse_newc(stock.stock_initramfs(kernel, init).read_bytes())}
    assert members["init"].data == b"\x7fELF init"
    assert members[MSR_MODULE.lstrip("/")].data == MODULE
    assert {"lib", "lib/modules", "dev/kmsg", "dev/console"} <= members.keys()


@pytest.mark.parametrize(
    ("deb", "needle"),
    [
        (image_deb(config=None), "no boot/config"),
        (image_deb(module=None), "holds no msr.ko"),
        (image_deb(config=b"# CONFIG_X86_MSR is not set\n", module=None), "no msr driver"),
        (image_deb(module=b"not an ELF"), "not a 64-bit ELF"),
    ],
    ids=["no-config", "module-missing", "no-driver", "bad-module"],
)
def test_a_package_without_what_init_needs_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, deb: bytes, needle: str
) -> None:
    fake_apt(tmp_path, monkeypatch, deb)
    with pytest.raises(BuildError, match=needle):
        stock.fetch_stock_kernel(f"linux-image-{VERSION}", cache=tmp_path / "cache")
    assert not (tmp_path / "cache" / "stock" / f"linux-image-{VERSION}" / "build.json").exists()


def test_a_built_in_msr_driver_needs_no_module_in_the_initramfs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_apt(tmp_path, monkeypatch, image_deb(config=b"CONFIG_X86_MSR=y\n", module=None))
    kernel = stock.fetch_stock_kernel(f"linux-image-{VERSION}", cache=tmp_path / "cache")
    assert kernel.msr_module is None
    init_dir = tmp_path / "init-fedcba9876543210"
    init_dir.mkdir()
    (init_dir / "init").write_bytes(b"init")
    init = InitramfsBuild(init_dir / "init", init_dir / "x.cpio", 4, 0, init_dir, True)
    names = {m.name for m in parse_newc(stock.stock_initramfs(kernel, init).read_bytes())}
    assert MSR_MODULE.lstrip("/") not in names and "init" in names
