"""The one exception type the KVM backend raises for host-side problems."""

from __future__ import annotations

__all__ = ["KvmError"]


class KvmError(RuntimeError):
    """/dev/kvm missing or unusable, a missing capability, a guest fault (with exit reason, RIP
    and instruction bytes) or a guest that did not finish before its timeout."""
