"""The KVM backend's one error family: every host-side problem is a :class:`KvmError`.

=====================  ==========================================================================
class                  raised when
=====================  ==========================================================================
``KvmError``           the base; also VM setup that failed for a reason below none of the others
``KvmUnavailable``     /dev/kvm is missing, unreadable, not KVM, or lacks a needed capability
``IoctlError``         one ioctl failed (also an ``OSError`` carrying the errno)
``GuestError``         the guest faulted or left the machine contract (exit reason, RIP, bytes)
``GuestTimeout``       the guest did not finish before its timeout, or its threads would not stop
=====================  ==========================================================================
"""

from __future__ import annotations

__all__ = ["GuestError", "GuestTimeout", "IoctlError", "KvmError", "KvmUnavailable"]


class KvmError(RuntimeError):
    """/dev/kvm missing or unusable, a missing capability, a guest fault (with exit reason, RIP
    and instruction bytes) or a guest that did not finish before its timeout."""


class KvmUnavailable(KvmError):
    """/dev/kvm cannot serve this VMM (missing, no permission, wrong API version, capability)."""


class IoctlError(OSError, KvmError):
    """An ioctl returned an error: ``errno`` is the kernel's, the message names the ioctl."""


class GuestError(KvmError):
    """The guest stopped the machine: an exit outside the machine contract, a fault, a triple
    fault; the message names the vCPU, exit reason, RIP, RSP, CPL and instruction bytes."""


class GuestTimeout(KvmError):
    """The guest did not end before its timeout (or a vCPU thread would not stop)."""
