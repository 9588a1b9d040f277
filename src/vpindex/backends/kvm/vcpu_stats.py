"""``VcpuStats``: one vCPU's counters from KVM's binary statistics (KVM_GET_STATS_FD).

KVM keeps per-vCPU counters (exits, halts, interrupts injected, instructions emulated, whether
the vCPU is blocked in a halt right now...) and, since Linux 5.14, hands them to userspace as a
file descriptor: a header, one descriptor per statistic (its name, type and where its value is)
and a data block of u64 values (``Documentation/virt/kvm/api.rst``, "KVM_GET_STATS_FD").
Reading it is a ``pread``: it needs no vCPU ioctl, so any thread can sample a vCPU while it is
inside KVM_RUN, and the sample does not disturb the guest.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Mapping
from typing import Final

from vpindex.backends.kvm._libc import ioctl_raw
from vpindex.backends.kvm.ioctls import Ioctl

__all__ = ["STATS_OF_INTEREST", "VcpuStats"]

#: The counters a boot's progress report samples (absent ones are skipped).
STATS_OF_INTEREST: Final = (
    "exits",
    "insn_emulation",
    "irq_injections",
    "halt_exits",
    "halt_wakeup",
    "blocking",
)
_HEADER: Final = struct.Struct("<IIIIII")  # flags, name_size, num_desc, id, desc, data offsets
_DESC: Final = struct.Struct("<IhHII")  # flags, exponent, size, offset, bucket_size
#: Bounds on what a stats header may claim (KVM's name size is 48; a few hundred stats).
_MAX_NAME: Final = 256
_MAX_DESC: Final = 4096


class VcpuStats:
    """The named u64 statistics of one vCPU. :meth:`open` returns None when the kernel has no
    binary stats (or refuses them); :meth:`read` never raises for a readable fd."""

    def __init__(self, fd: int, offsets: Mapping[str, int], data_offset: int, size: int) -> None:
        self._fd = fd
        self._offsets = dict(offsets)
        self._data_offset = data_offset
        self._size = size

    @classmethod
    def open(cls, vcpu_fd: int, names: Iterable[str] = STATS_OF_INTEREST) -> VcpuStats | None:
        """The stats of the vCPU behind ``vcpu_fd``, limited to ``names``; None if unavailable."""
        fd, err = ioctl_raw(vcpu_fd, Ioctl.GET_STATS_FD, 0)
        if err or fd < 0:
            return None
        try:
            return cls._parse(fd, set(names))
        except (OSError, struct.error, ValueError):
            os.close(fd)
            return None

    @classmethod
    def _parse(cls, fd: int, wanted: set[str]) -> VcpuStats:
        _flags, name_size, count, _id, desc_off, data_off = _HEADER.unpack(
            os.pread(fd, _HEADER.size, 0)
        )
        if not 0 < name_size <= _MAX_NAME or not 0 < count <= _MAX_DESC:
            raise ValueError(f"implausible stats header: name size {name_size}, {count} stats")
        step = _DESC.size + name_size
        raw = os.pread(fd, step * count, desc_off)
        offsets: dict[str, int] = {}
        end = 0
        for k in range(min(count, len(raw) // step)):
            _f, _exp, size, offset, _bucket = _DESC.unpack_from(raw, k * step)
            name = raw[k * step + _DESC.size : (k + 1) * step].split(b"\0", 1)[0].decode()
            end = max(end, offset + 8 * size)
            if name in wanted and size == 1:
                offsets[name] = offset
        return cls(fd, offsets, data_off, end)

    @property
    def names(self) -> tuple[str, ...]:
        """The statistics this reader returns."""
        return tuple(self._offsets)

    def read(self) -> dict[str, int]:
        """The current value of each statistic."""
        data = os.pread(self._fd, self._size, self._data_offset)
        return {
            name: int.from_bytes(data[off : off + 8], "little")
            for name, off in self._offsets.items()
            if off + 8 <= len(data)
        }

    def close(self) -> None:
        """Close the stats fd."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
