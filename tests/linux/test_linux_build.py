"""The build pipeline and its cache, driven through a fake kernel tree whose Makefile answers
tinyconfig / olddefconfig / vmlinux in milliseconds; and one real build of the guest kernel."""

from __future__ import annotations

import json
import os
import shutil
import tarfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from helpers import assert_one_error_line
from vpindex.backends.linux import build, kconfig
from vpindex.backends.linux.build import BuildError, SourceError, build_kernel, cached_build
from vpindex.cli import app
from vpindex.cli import commands as _commands  # noqa: F401  (registers the sub-commands)

FAKE_MAKEFILE = """\
VERSION = 6
PATCHLEVEL = 12
SUBLEVEL = 0
EXTRAVERSION = -fake
O ?= .
tinyconfig:
\tmkdir -p $(O)
\tprintf 'CONFIG_X86=y\\n# CONFIG_SMP is not set\\nCONFIG_NR_CPUS=1\\n' > $(O)/.config
olddefconfig:
\t{olddefconfig}
vmlinux:
\techo built >> $(CURDIR)/builds
\t{vmlinux}
\tmkdir -p $(O)/include/config
\tprintf '6.12.0-fake\\n' > $(O)/include/config/kernel.release
\tprintf '\\177ELF\\002fake' > $(O)/vmlinux
"""


def fake_tree(root: Path, olddefconfig: str = "true", vmlinux: str = "true") -> Path:
    tree = root / "linux-fake"
    (tree / "arch" / "x86").mkdir(parents=True)
    (tree / "Makefile").write_text(FAKE_MAKEFILE.format(olddefconfig=olddefconfig, vmlinux=vmlinux))
    return tree


def builds(tree: Path) -> int:
    path = tree / "builds"
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_a_build_is_cached_and_a_second_call_compiles_nothing(tmp_path: Path) -> None:
    tree, cache = fake_tree(tmp_path), tmp_path / "cache"
    lines: list[str] = []
    first = build_kernel(tree, lines.append, cache=cache)
    assert not first.kernel.cache_hit and builds(tree) == 1
    assert first.vmlinux.read_bytes() == b"\x7fELF\x02fake"
    assert first.kernel.kernel_version == "6.12.0-fake"
    assert kconfig.unapplied(first.kernel.config.read_text(), kconfig.load_fragment()) == []
    assert first.initrd.stat().st_size > first.initramfs.init_bytes
    assert any("configure:" in line for line in lines) and any("compile:" in line for line in lines)
    assert not (cache / "build").exists() or not any((cache / "build").iterdir())

    second = build_kernel(tree, cache=cache)
    assert second.kernel.cache_hit and second.initramfs.cache_hit and builds(tree) == 1
    assert second.vmlinux == first.vmlinux
    assert cached_build(tree, cache=cache) == second


def test_a_different_fragment_is_a_different_cache_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tree, cache = fake_tree(tmp_path), tmp_path / "cache"
    first = build_kernel(tree, cache=cache)
    other = kconfig.parse_fragment("\n".join([*kconfig.load_fragment().lines(), "CONFIG_EXTRA=y"]))
    monkeypatch.setattr(kconfig, "load_fragment", lambda: other)
    assert cached_build(tree, cache=cache) is None
    second = build_kernel(tree, cache=cache)
    assert not second.kernel.cache_hit and builds(tree) == 2
    assert second.kernel.cache_dir != first.kernel.cache_dir
    assert second.kernel.config_hash == other.digest() != first.kernel.config_hash


def test_an_option_that_does_not_take_effect_fails_the_build_naming_it(tmp_path: Path) -> None:
    tree = fake_tree(tmp_path, olddefconfig="sed -i '/^CONFIG_HYPERV=y/d' $(O)/.config")
    with pytest.raises(BuildError, match="CONFIG_HYPERV: wanted y, got not set"):
        build_kernel(tree, cache=tmp_path / "cache")
    assert builds(tree) == 0, "nothing is compiled with a wrong config"


def test_a_failing_step_names_it_and_quotes_the_log(tmp_path: Path) -> None:
    tree = fake_tree(tmp_path, vmlinux="echo 'cc1: out of fish' && false")
    with pytest.raises(BuildError, match=r"compile failed .*out of fish"):
        build_kernel(tree, cache=tmp_path / "cache")


def test_a_build_past_its_timeout_is_stopped(tmp_path: Path) -> None:
    tree = fake_tree(tmp_path, vmlinux="sleep 60")
    with pytest.raises(BuildError, match="timed out"):
        build_kernel(tree, cache=tmp_path / "cache", timeout_s=3)


def test_a_tarball_source_is_unpacked_once_and_keyed_by_its_hash(tmp_path: Path) -> None:
    tree = fake_tree(tmp_path / "t")
    tarball = tmp_path / "linux-fake.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(tree, arcname="linux-fake")
    cache = tmp_path / "cache"
    first = build_kernel(tarball, cache=cache)
    assert not first.kernel.cache_hit and first.kernel.source == str(tarball)
    assert len(list((cache / "src").glob("*/linux-fake/Makefile"))) == 1
    assert build_kernel(tarball, cache=cache).kernel.cache_hit
    tarball.write_bytes(tarball.read_bytes() + b"\0" * 1024)  # another tarball: another key
    assert not build_kernel(tarball, cache=cache).kernel.cache_hit


@pytest.mark.parametrize("kind", ["missing", "not-a-tree", "not-a-tarball"])
def test_a_bad_source_is_a_source_error(tmp_path: Path, kind: str) -> None:
    path = {
        "missing": tmp_path / "nope",
        "not-a-tree": tmp_path,
        "not-a-tarball": tmp_path / "notes.txt",
    }[kind]
    if kind == "not-a-tarball":
        path.write_text("hello")
    with pytest.raises(SourceError, match="--source"):
        build_kernel(path, cache=tmp_path / "cache")


def test_without_root_a_missing_source_package_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(build, "DEFAULT_TARBALL", tmp_path / "absent.tar.xz")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(SourceError) as err:
        build_kernel(None, cache=tmp_path / "cache")
    message = str(err.value)
    assert "apt-get install --no-install-recommends" in message and "linux-source-6.12" in message
    assert "--source" in message and "\n" not in message


def test_cli_build_json_and_one_line_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    env = {"XDG_CACHE_HOME": str(tmp_path / "xdg")}
    tree = fake_tree(tmp_path)
    done = runner.invoke(app, ["linux", "build", "--source", str(tree), "--json"], env=env)
    assert done.exit_code == 0, done.output
    data = json.loads(done.stdout)
    assert data["kernel_version"] == "6.12.0-fake" and data["cache_hit"] is False
    assert data["vmlinux"].startswith(str(tmp_path / "xdg" / "vpindex" / "linux"))
    assert "configure:" in done.stderr
    again = runner.invoke(app, ["linux", "build", "--source", str(tree), "--json"], env=env)
    assert json.loads(again.stdout)["cache_hit"] is True

    for args, needle in [
        (["--source", str(tmp_path / "nope")], "--source"),
        (["--timeout", "0"], "--timeout"),
    ]:
        bad = runner.invoke(app, ["linux", "build", *args], env=env)
        assert_one_error_line(bad.exit_code, bad.stdout, bad.stderr, needle)

    failed = runner.invoke(
        app, ["linux", "build", "--source", str(fake_tree(tmp_path / "f", vmlinux="false"))],
        env=env,
    )  # fmt: skip
    assert failed.exit_code == 1 and failed.stderr.splitlines()[-1].startswith("error: compile")


def _real_build_skip_reason() -> str | None:
    if build.DEFAULT_TARBALL.exists():
        return None
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return f"{build.DEFAULT_TARBALL} is missing and cannot be installed (not root/no apt-get)"
    return None


@pytest.mark.linux_build
@pytest.mark.timeout(build.DEFAULT_TIMEOUT_S + 60)  # a cold build takes minutes, a cached one 1 s
def test_the_real_guest_kernel_builds_with_every_fragment_option() -> None:
    reason = _real_build_skip_reason()
    if reason is not None:
        pytest.skip(reason)
    try:
        result = build_kernel(None)
    except SourceError as err:
        pytest.skip(f"the kernel source cannot be installed here: {err}")
    header = result.vmlinux.read_bytes()[:64]
    assert header[:5] == b"\x7fELF\x02" and int.from_bytes(header[18:20], "little") == 62
    assert int.from_bytes(header[24:32], "little") == 0x1000000  # e_entry: startup_64
    assert result.kernel.kernel_version.startswith("6.12")
    final = result.kernel.config.read_text()
    assert kconfig.unapplied(final, kconfig.load_fragment()) == []
    assert build_kernel(None).kernel.cache_hit
