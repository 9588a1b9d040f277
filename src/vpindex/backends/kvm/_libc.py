"""The raw ``ioctl(2)`` and ``membarrier(2)`` through ctypes.

``fcntl.ioctl`` retries on EINTR (PEP 475), which would swallow the kick that must bring a vCPU
thread out of KVM_RUN, and it returns the buffer instead of the int result for buffer arguments
(KVM_SIGNAL_MSI reports "delivered" in its return value). ctypes calls release the GIL.
"""

from __future__ import annotations

import ctypes
import os

from vpindex.backends.kvm.errors import IoctlError

__all__ = ["ioctl", "ioctl_raw", "membarrier", "request_name"]

_libc = ctypes.CDLL(None, use_errno=True)
_ioctl = _libc.ioctl
_ioctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p)
_ioctl.restype = ctypes.c_int
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
#: ``__NR_membarrier`` on x86-64 (arch/x86/entry/syscalls/syscall_64.tbl); glibc has no wrapper.
_SYS_MEMBARRIER = 324


def ioctl_raw(fd: int, request: int, arg: int | None = 0) -> tuple[int, int]:
    """Issue the ioctl once; return ``(result, errno)`` (errno 0 on success). Never retries."""
    r = _ioctl(fd, request, arg)
    if r < 0:
        return r, ctypes.get_errno()
    return r, 0


def ioctl(fd: int, request: int, arg: int | None = 0, *, what: str = "") -> int:
    """Issue the ioctl; raise :class:`IoctlError` (an ``OSError`` naming ``what``) on failure,
    else return its result. ``what`` defaults to the name of ``request`` when it is a member
    of a request enum (``Ioctl.GET_REGS`` -> ``KVM_GET_REGS``), else to its number in hex."""
    r = _ioctl(fd, request, arg)
    if r < 0:
        err = ctypes.get_errno()
        raise IoctlError(err, f"{what or request_name(request)}: {os.strerror(err)}")
    return int(r)


def request_name(request: int) -> str:
    """The ``<linux/kvm.h>`` name of ``request``: ``KVM_`` + its enum member name, or its
    number in hex for a plain int."""
    name = getattr(request, "name", None)
    return f"KVM_{name}" if isinstance(name, str) else hex(request)


def membarrier(cmd: int) -> tuple[int, int]:
    """``membarrier(cmd, 0, 0)`` once; return ``(result, errno)`` (errno 0 on success)."""
    r = _syscall(
        ctypes.c_long(_SYS_MEMBARRIER), ctypes.c_int(cmd), ctypes.c_uint(0), ctypes.c_int(0)
    )
    if r < 0:
        return r, ctypes.get_errno()
    return int(r), 0
