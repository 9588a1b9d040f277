"""Build the vpindex guest: a small Linux kernel from an unmodified source tree, and the
project's own ``/init`` packed into an uncompressed initramfs; both cached.

:func:`build_kernel` is the entry point. The kernel comes from Debian's ``linux-source-6.12``
tarball (installed with ``apt-get`` when missing and running as root) or from a source tree or
tarball the caller names. Steps: ``make tinyconfig``, merge ``kernel.config``, ``make
olddefconfig``, check that every fragment option kept its value, ``make vmlinux``. The results
live in a cache keyed by the source (the tarball's SHA-256, or a tree's path and kernel
version), the fragment's options, the compiler version and :data:`RECIPE`; the ``/init``
binary's key is its source, its compile command and the compiler version. A second build with
the same inputs returns at once.

Cache layout, under ``${XDG_CACHE_HOME:-~/.cache}/vpindex/linux``::

    kernel-<key>/vmlinux, config, build.json
    init-<key>/init, initramfs.cpio, build.json
    src/<tarball sha>/<top directory of the tarball>   (unpacked once, reused)
    build/<key>/                                        (object tree, removed after success)
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from vpindex.backends.linux import cpio, kconfig, workload

__all__ = [
    "APT_PACKAGES",
    "DEFAULT_TARBALL",
    "DEFAULT_TIMEOUT_S",
    "RECIPE",
    "BuildError",
    "BuildResult",
    "InitramfsBuild",
    "KernelBuild",
    "ProgressFn",
    "SourceError",
    "build_initramfs",
    "build_kernel",
    "cache_root",
    "cached_build",
    "initramfs_entries",
    "write_atomic",
]

ProgressFn = Callable[[str], None]
"""Receives one human-readable progress line at a time (no trailing newline)."""

SOURCE_PACKAGE = "linux-source-6.12"
DEFAULT_TARBALL = Path("/usr/src/linux-source-6.12.tar.xz")
"""Where Debian's ``linux-source-6.12`` package puts the kernel source."""
APT_PACKAGES: tuple[str, ...] = (
    SOURCE_PACKAGE,
    "bc",
    "flex",
    "bison",
    "libelf-dev",
    "libssl-dev",
    "cpio",
)
"""What ``apt-get install --no-install-recommends`` needs to build the kernel here."""
RECIPE = 1
"""Bumped whenever the build steps change what they produce (part of every cache key)."""
DEFAULT_TIMEOUT_S = 3600.0
"""Bound on one whole build (apt, unpack, configure, compile)."""

# Tool or header -> the Debian package that provides it.
_TOOLS = {"make": "make", "gcc": "gcc", "flex": "flex", "bison": "bison", "bc": "bc", "tar": "tar"}
_HEADERS = {"gelf.h": "libelf-dev", "openssl/opensslv.h": "libssl-dev"}
_INCLUDE_DIRS = (Path("/usr/include"), Path("/usr/include/x86_64-linux-gnu"))
_INIT_SOURCE = "init.c"
_INIT_CFLAGS = ("-static", "-O2", "-pthread", "-s", "-Wall", "-Wextra")
_PROGRESS_EVERY_S = 15.0
_LOG_TAIL_LINES = 12


class BuildError(RuntimeError):
    """The build failed; the message is one line saying what and where (a failed run)."""


class SourceError(BuildError):
    """The kernel source or a build tool is missing or not usable: the user must act (install
    a package or pass a different ``--source``); the message says what to do."""


@dataclass(frozen=True)
class KernelBuild:
    """A built (or cached) guest kernel."""

    vmlinux: Path
    config: Path
    """The final ``.config`` the kernel was built with."""
    kernel_version: str
    """``include/config/kernel.release``, e.g. ``6.12.117``."""
    config_hash: str
    """SHA-256 of the fragment's options (see :meth:`kconfig.Fragment.digest`)."""
    source: str
    """The tarball or tree it was built from."""
    cache_dir: Path
    cache_hit: bool
    build_seconds: float
    """Wall-clock seconds of the build that produced it (this run's, or the cached one's)."""


@dataclass(frozen=True)
class InitramfsBuild:
    """The project's ``/init``, compiled, and the uncompressed newc initramfs holding it."""

    init: Path
    initramfs: Path
    init_bytes: int
    initramfs_bytes: int
    cache_dir: Path
    cache_hit: bool


@dataclass(frozen=True)
class BuildResult:
    """Everything ``vpindex linux run`` needs to boot the guest."""

    kernel: KernelBuild
    initramfs: InitramfsBuild

    @property
    def vmlinux(self) -> Path:
        """The kernel ELF to load."""
        return self.kernel.vmlinux

    @property
    def initrd(self) -> Path:
        """The initramfs to load."""
        return self.initramfs.initramfs

    def as_json(self) -> dict[str, Any]:
        """Paths, versions, hashes and cache hits, for ``vpindex linux build --json``."""
        k, i = self.kernel, self.initramfs
        return {
            "vmlinux": str(k.vmlinux),
            "config": str(k.config),
            "kernel_version": k.kernel_version,
            "config_hash": k.config_hash,
            "source": k.source,
            "kernel_cache_hit": k.cache_hit,
            "kernel_build_seconds": round(k.build_seconds, 1),
            "initramfs": str(i.initramfs),
            "init": str(i.init),
            "init_bytes": i.init_bytes,
            "initramfs_bytes": i.initramfs_bytes,
            "initramfs_cache_hit": i.cache_hit,
            "cache_hit": k.cache_hit and i.cache_hit,
        }


def cache_root() -> Path:
    """``${XDG_CACHE_HOME:-~/.cache}/vpindex/linux``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "vpindex" / "linux"


class _Clock:
    """Elapsed time, the deadline, and progress lines stamped with both."""

    def __init__(self, progress: ProgressFn | None, timeout_s: float) -> None:
        self.start = time.monotonic()
        self.deadline = self.start + timeout_s
        self.timeout_s = timeout_s
        self._progress = progress

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def say(self, stage: str, message: str) -> None:
        if self._progress is not None:
            self._progress(f"[{self.elapsed():6.1f}s] {stage}: {message}")


def _digest(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _compiler_version() -> str:
    try:
        out = subprocess.run(
            ["gcc", "-dumpfullversion"], capture_output=True, text=True, timeout=30, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip()


def _tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text.splitlines()[-lines:] if line.strip())


# --- prerequisites --------------------------------------------------------------------------


def _missing_packages(need_source: bool) -> list[str]:
    missing = [pkg for tool, pkg in _TOOLS.items() if shutil.which(tool) is None]
    for header, pkg in _HEADERS.items():
        if not any((d / header).exists() for d in _INCLUDE_DIRS):
            missing.append(pkg)
    if need_source and not DEFAULT_TARBALL.exists():
        missing.append(SOURCE_PACKAGE)
    return sorted(set(missing))


def _install(packages: Sequence[str], clock: _Clock) -> None:
    """``apt-get update`` then install ``packages`` (only called as root)."""
    if shutil.which("apt-get") is None:
        raise SourceError(f"missing {' '.join(packages)} and there is no apt-get to install them")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (
        ["apt-get", "update"],
        ["apt-get", "install", "-y", "--no-install-recommends", *packages],
    ):
        clock.say("install", " ".join(argv))
        try:
            done = subprocess.run(
                argv,
                check=False,
                capture_output=True,
                text=True,
                env=env,
                timeout=max(1.0, clock.left()),
            )
        except subprocess.TimeoutExpired:
            raise BuildError(f"{' '.join(argv[:2])} timed out") from None
        if done.returncode != 0:
            last = " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
            raise SourceError(f"{' '.join(argv[:2])} failed ({done.returncode}): {last}")


def _ensure_prerequisites(need_source: bool, clock: _Clock) -> None:
    missing = _missing_packages(need_source)
    if not missing:
        return
    if os.geteuid() != 0:
        what = "the kernel source and build tools" if SOURCE_PACKAGE in missing else "build tools"
        hint = "" if SOURCE_PACKAGE not in missing else ", or pass --source DIR"
        raise SourceError(
            f"{what} missing: run `apt-get install --no-install-recommends "
            f"{' '.join(missing)}` as root{hint}"
        )
    _install(missing, clock)
    still = _missing_packages(need_source)
    if still:
        raise SourceError(f"still missing after apt-get install: {' '.join(still)}")


# --- the source -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Source:
    label: str
    """What the user named (tarball or tree path)."""
    identity: str
    """What the cache key uses."""
    tarball: Path | None
    tree: Path | None


def _makefile_version(tree: Path) -> str:
    fields: dict[str, str] = {}
    try:
        text = (tree / "Makefile").read_text(errors="replace")
    except OSError:
        return ""
    for line in text.splitlines()[:20]:
        m = re.fullmatch(r"(VERSION|PATCHLEVEL|SUBLEVEL|EXTRAVERSION)\s*=\s*(\S*)\s*", line)
        if m:
            fields[m.group(1)] = m.group(2)
    if "VERSION" not in fields:
        return ""
    base = ".".join(fields.get(k, "0") for k in ("VERSION", "PATCHLEVEL", "SUBLEVEL"))
    return base + fields.get("EXTRAVERSION", "")


def _tarball_sha(tarball: Path, root: Path, clock: _Clock | None = None) -> str:
    """The tarball's SHA-256, remembered per (path, size, mtime) so a cached build is quick."""
    st = tarball.stat()
    memo_key = f"{tarball.resolve()}:{st.st_size}:{st.st_mtime_ns}"
    memo = root / "tarballs.json"
    try:
        known = json.loads(memo.read_text())
    except (OSError, ValueError):
        known = {}
    if not isinstance(known, dict):
        known = {}
    if isinstance(known.get(memo_key), str):
        return str(known[memo_key])
    if clock is not None:
        clock.say("source", f"hashing {tarball} (once)")
    h = hashlib.sha256()
    with tarball.open("rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    known[memo_key] = h.hexdigest()
    write_atomic(memo, json.dumps(known, indent=1).encode())
    return h.hexdigest()


def _resolve_source(source: Path | None, root: Path, clock: _Clock) -> _Source:
    if source is None:
        _ensure_prerequisites(True, clock)
        source = DEFAULT_TARBALL
    else:
        if not source.exists():
            raise SourceError(f"--source {source}: no such file or directory")
        _ensure_prerequisites(False, clock)
    return _identify(source, root, clock)


def _identify(source: Path, root: Path, clock: _Clock) -> _Source:
    if source.is_dir():
        if not (source / "Makefile").is_file() or not (source / "arch" / "x86").is_dir():
            raise SourceError(f"--source {source}: not a Linux source tree (no Makefile/arch/x86)")
        version = _makefile_version(source)
        if not version:
            raise SourceError(f"--source {source}: its Makefile names no kernel version")
        tree = source.resolve()
        return _Source(str(tree), f"tree:{tree}:{version}", None, tree)
    if not re.search(r"\.tar(\.(xz|gz|bz2|zst))?$", source.name):
        raise SourceError(f"--source {source}: want a source directory or a .tar.* tarball")
    sha = _tarball_sha(source, root, clock)
    return _Source(str(source.resolve()), f"tarball:{sha}", source.resolve(), None)


def _unpack(src: _Source, root: Path, clock: _Clock) -> Path:
    """The unpacked tree of ``src`` (unpacking a tarball once, into the cache)."""
    if src.tree is not None:
        return src.tree
    assert src.tarball is not None
    home = root / "src" / src.identity.split(":", 1)[1][:16]
    stamp = home / ".unpacked"
    if stamp.exists():
        return home / stamp.read_text().strip()
    clock.say("unpack", f"{src.tarball} -> {home} (once)")
    home.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(home, ignore_errors=True)
    scratch = Path(tempfile.mkdtemp(prefix=".unpack-", dir=home.parent))
    try:
        _run(
            ["tar", "-xf", str(src.tarball), "-C", str(scratch)],
            scratch.parent / "unpack.log",
            "unpack",
            clock,
        )
        tops = [p for p in scratch.iterdir() if p.is_dir()]
        if len(tops) != 1 or not (tops[0] / "Makefile").is_file():
            raise BuildError(f"{src.tarball}: does not unpack to one kernel source directory")
        scratch.chmod(0o755)
        scratch.rename(home)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    stamp.write_text(tops[0].name)
    return home / tops[0].name


# --- running make ---------------------------------------------------------------------------


def _run(argv: Sequence[str], log: Path, stage: str, clock: _Clock) -> None:
    """Run ``argv`` with its output in ``log``; a progress line every 15 s (the log's last
    line); kill its process group at the deadline. BuildError on failure or timeout."""
    with log.open("ab") as out:
        out.write(f"$ {' '.join(argv)}\n".encode())
        out.flush()
        proc = subprocess.Popen(
            list(argv),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        next_note = time.monotonic() + _PROGRESS_EVERY_S
        while True:
            try:
                rc = proc.wait(timeout=max(0.05, min(1.0, clock.left())))
                break
            except subprocess.TimeoutExpired:
                pass
            if clock.left() <= 0:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                raise BuildError(f"{stage} timed out after {clock.timeout_s:.0f} s (log: {log})")
            if time.monotonic() >= next_note:
                next_note += _PROGRESS_EVERY_S
                last = _tail(log, 1)
                clock.say(stage, last[:100] if last and not last.startswith("$ ") else "running")
    if rc != 0:
        raise BuildError(f"{stage} failed (exit {rc}); log {log}: {_tail(log)}")


def _make(
    tree: Path,
    objdir: Path,
    targets: Sequence[str],
    log: Path,
    stage: str,
    clock: _Clock,
    jobs: int | None = None,
) -> None:
    argv = ["make", "-C", str(tree), f"O={objdir}", "ARCH=x86_64"]
    if jobs is not None:
        argv.append(f"-j{jobs}")
    _run([*argv, *targets], log, stage, clock)


# --- the cache ------------------------------------------------------------------------------


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``path`` whole or not at all (a temporary file in its directory, then rename);
    creates the directory (under the cache)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def _locked(root: Path, clock: _Clock) -> Iterator[None]:
    """Hold the cache's build lock (other vpindex builds wait; bounded by the deadline)."""
    root.mkdir(parents=True, exist_ok=True)
    with (root / ".lock").open("a") as lock:
        waited = False
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not waited:
                    clock.say("lock", f"waiting for another vpindex build ({root / '.lock'})")
                    waited = True
                if clock.left() <= 0:
                    raise BuildError("timed out waiting for another vpindex build") from None
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _read_meta(directory: Path, files: Sequence[str]) -> dict[str, Any] | None:
    try:
        meta = json.loads((directory / "build.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or not all((directory / f).is_file() for f in files):
        return None
    return meta


def _kernel_key(src: _Source, fragment: kconfig.Fragment) -> str:
    return _digest("kernel", RECIPE, src.identity, fragment.digest(), _compiler_version())[:16]


def _cached_kernel(directory: Path, clock: _Clock) -> KernelBuild | None:
    meta = _read_meta(directory, ("vmlinux", "config"))
    if meta is None:
        return None
    clock.say("kernel", f"cached: {directory / 'vmlinux'}")
    return KernelBuild(
        vmlinux=directory / "vmlinux",
        config=directory / "config",
        kernel_version=str(meta.get("kernel_version", "")),
        config_hash=str(meta.get("config_hash", "")),
        source=str(meta.get("source", "")),
        cache_dir=directory,
        cache_hit=True,
        build_seconds=float(meta.get("build_seconds", 0.0)),
    )


def _compile_kernel(
    src: _Source,
    fragment: kconfig.Fragment,
    key: str,
    root: Path,
    clock: _Clock,
    jobs: int | None,
) -> KernelBuild:
    tree = _unpack(src, root, clock)
    objdir = root / "build" / key
    shutil.rmtree(objdir, ignore_errors=True)
    objdir.mkdir(parents=True)
    log = objdir / "build.log"
    started = clock.elapsed()

    clock.say("configure", f"make tinyconfig in {objdir}")
    _make(tree, objdir, ["tinyconfig"], log, "configure", clock)
    dotconfig = objdir / ".config"
    dotconfig.write_text(kconfig.merge(dotconfig.read_text(), fragment))
    clock.say("configure", f"merged {len(fragment.options)} options; make olddefconfig")
    _make(tree, objdir, ["olddefconfig"], log, "configure", clock)
    wrong = kconfig.unapplied(dotconfig.read_text(), fragment)
    if wrong:
        raise BuildError(
            f"{len(wrong)} kernel.config option(s) did not take effect "
            f"(unmet dependencies?): {'; '.join(map(str, wrong))}"
        )

    jobs = jobs or os.cpu_count() or 1
    clock.say("compile", f"make -j{jobs} vmlinux (log: {log})")
    _make(tree, objdir, ["vmlinux"], log, "compile", clock, jobs)
    vmlinux = objdir / "vmlinux"
    with vmlinux.open("rb") as f:
        if f.read(5) != b"\x7fELF\x02":
            raise BuildError(f"{vmlinux} is not a 64-bit ELF")
    release = (objdir / "include" / "config" / "kernel.release").read_text().strip()

    out = root / f"kernel-{key}"
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(vmlinux, out / ".vmlinux.tmp")
    os.replace(out / ".vmlinux.tmp", out / "vmlinux")
    shutil.copyfile(dotconfig, out / "config")
    seconds = clock.elapsed() - started
    meta = {
        "kernel_version": release,
        "config_hash": fragment.digest(),
        "source": src.label,
        "source_identity": src.identity,
        "recipe": RECIPE,
        "build_seconds": round(seconds, 1),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_atomic(out / "build.json", json.dumps(meta, indent=1).encode())
    shutil.rmtree(objdir, ignore_errors=True)
    clock.say("kernel", f"built {release} in {seconds:.0f} s: {out / 'vmlinux'}")
    return KernelBuild(
        vmlinux=out / "vmlinux",
        config=out / "config",
        kernel_version=release,
        config_hash=fragment.digest(),
        source=src.label,
        cache_dir=out,
        cache_hit=False,
        build_seconds=seconds,
    )


# --- /init and the initramfs ------------------------------------------------------------------


def _init_command(source: Path, output: Path) -> list[str]:
    return ["gcc", *_INIT_CFLAGS, *workload.init_defines(), "-o", str(output), str(source)]


def initramfs_entries(init: bytes) -> list[cpio.Entry]:
    """The initramfs members: ``/init``, ``/proc`` and ``/dev`` with the two nodes ``/init``
    uses before devtmpfs is mounted (``console`` 5:1, which the kernel opens as init's stdio,
    and ``kmsg`` 1:11, where ``/init`` writes its lines)."""
    return [
        cpio.directory("dev"),
        cpio.char_device("dev/console", 5, 1),
        cpio.char_device("dev/kmsg", 1, 11, 0o644),
        cpio.directory("proc"),
        cpio.regular_file("init", init, 0o755),
    ]


def build_initramfs(
    progress: ProgressFn | None = None,
    *,
    cache: Path | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> InitramfsBuild:
    """Compile ``init.c`` (``gcc -static -O2 -pthread``) and pack it, or reuse the cache."""
    clock = _Clock(progress, timeout_s)
    return _build_initramfs(cache or cache_root(), clock)


def _build_initramfs(root: Path, clock: _Clock) -> InitramfsBuild:
    text = resources.files(__package__).joinpath(_INIT_SOURCE).read_bytes()
    key = _digest(
        "init",
        RECIPE,
        hashlib.sha256(text).hexdigest(),
        _init_command(Path("s"), Path("o")),
        _compiler_version(),
    )[:16]
    out = root / f"init-{key}"
    meta = _read_meta(out, ("init", "initramfs.cpio"))
    if meta is not None:
        clock.say("init", f"cached: {out / 'initramfs.cpio'}")
        return InitramfsBuild(
            out / "init",
            out / "initramfs.cpio",
            (out / "init").stat().st_size,
            (out / "initramfs.cpio").stat().st_size,
            out,
            True,
        )
    if shutil.which("gcc") is None:
        raise SourceError("gcc is missing: run `apt-get install gcc libc6-dev` as root")
    with tempfile.TemporaryDirectory(prefix="vpindex-init-") as tmp:
        source, binary = Path(tmp) / _INIT_SOURCE, Path(tmp) / "init"
        source.write_bytes(text)
        clock.say("init", "gcc -static -O2 -pthread init.c")
        try:
            done = subprocess.run(
                _init_command(source, binary),
                check=False,
                capture_output=True,
                text=True,
                timeout=max(1.0, clock.left()),
            )
        except subprocess.TimeoutExpired:
            raise BuildError("compiling /init timed out") from None
        if done.returncode != 0:
            first = " | ".join(done.stderr.strip().splitlines()[:4])
            raise BuildError(f"compiling /init failed (is libc6-dev installed?): {first}")
        init = binary.read_bytes()
    archive = cpio.write_newc(initramfs_entries(init))
    write_atomic(out / "init", init, 0o755)
    write_atomic(out / "initramfs.cpio", archive)
    meta = {"init_bytes": len(init), "initramfs_bytes": len(archive), "recipe": RECIPE}
    write_atomic(out / "build.json", json.dumps(meta, indent=1).encode())
    clock.say("init", f"/init {len(init):,} bytes, initramfs {len(archive):,} bytes")
    return InitramfsBuild(out / "init", out / "initramfs.cpio", len(init), len(archive), out, False)


# --- entry points -----------------------------------------------------------------------------


def build_kernel(
    source: Path | None = None,
    progress: ProgressFn | None = None,
    *,
    cache: Path | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    jobs: int | None = None,
) -> BuildResult:
    """Build (or take from the cache) the guest kernel and the initramfs with ``/init``.

    ``source``: None for Debian's ``linux-source-6.12`` tarball (installed with apt-get when
    missing and running as root), else a kernel source tree or a ``.tar.*`` of one. Progress
    lines go to ``progress``. Raises :class:`SourceError` when the source or a build tool is
    missing and cannot be installed (the message says what to install or pass), and
    :class:`BuildError` when a step fails, a fragment option does not take effect, or the
    build runs past ``timeout_s``.
    """
    clock = _Clock(progress, timeout_s)
    root = cache or cache_root()
    fragment = kconfig.load_fragment()
    src = _resolve_source(source, root, clock)
    key = _kernel_key(src, fragment)
    with _locked(root, clock):
        kernel = _cached_kernel(root / f"kernel-{key}", clock)
        if kernel is None:
            kernel = _compile_kernel(src, fragment, key, root, clock, jobs)
        initramfs = _build_initramfs(root, clock)
    return BuildResult(kernel, initramfs)


def cached_build(source: Path | None = None, *, cache: Path | None = None) -> BuildResult | None:
    """The build for ``source`` if its kernel is in the cache, else None. Never installs,
    unpacks or compiles a kernel (it may hash the tarball once, and compiles ``/init`` if that
    alone is missing: about a second)."""
    root = cache or cache_root()
    path = DEFAULT_TARBALL if source is None else source
    clock = _Clock(None, DEFAULT_TIMEOUT_S)
    try:
        if not path.exists():
            return None
        src = _identify(path, root, clock)
        kernel = _cached_kernel(root / f"kernel-{_kernel_key(src, kconfig.load_fragment())}", clock)
        if kernel is None:
            return None
        with _locked(root, clock):
            return BuildResult(kernel, _build_initramfs(root, clock))
    except (OSError, BuildError):
        return None
