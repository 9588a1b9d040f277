"""Guest physical memory, bounds-checked: a guest address never reads outside the buffer."""

from __future__ import annotations

import mmap

from vpindex.abi import PAGE_SIZE, U64_MAX

__all__ = ["GuestMemory"]


class GuestMemory:
    """Guest-physical memory [0, size) over a writable buffer (a ``bytearray`` or the VMM's RAM
    ``mmap``: no copy is made, so the VMM and the engine see the same bytes).

    The ``read``/``write`` methods are for the host and raise ``ValueError`` naming the range
    when it is outside memory. The engine uses :meth:`view`, which returns None instead, so a
    guest-supplied address can only ever produce an HV_STATUS.
    """

    __slots__ = ("_buf", "_view", "size")

    def __init__(self, buffer: bytearray | mmap.mmap | memoryview) -> None:
        view = memoryview(buffer)
        if view.readonly or view.itemsize != 1 or view.ndim != 1:
            raise ValueError("guest memory must be a writable, flat byte buffer")
        self._buf = buffer
        self._view = view
        self.size = len(view)

    @classmethod
    def allocate(cls, size: int) -> GuestMemory:
        """Fresh zeroed memory of ``size`` bytes (a positive multiple of 4 KiB)."""
        if not isinstance(size, int) or size <= 0 or size % PAGE_SIZE:
            raise ValueError(
                f"memory size must be a positive multiple of {PAGE_SIZE}, got {size!r}"
            )
        return cls(bytearray(size))

    def contains(self, gpa: int, length: int) -> bool:
        """True if [gpa, gpa + length) lies inside memory (no wrap-around)."""
        return 0 <= gpa <= U64_MAX and length >= 0 and gpa + length <= self.size

    def view(self, gpa: int, length: int) -> memoryview | None:
        """A zero-copy view of [gpa, gpa + length), or None if any byte is outside memory."""
        if gpa >= 0 and length >= 0 and gpa + length <= self.size:
            return self._view[gpa : gpa + length]
        return None

    def read(self, gpa: int, length: int) -> bytes:
        """Copy ``length`` bytes from ``gpa``."""
        view = self.view(gpa, length)
        if view is None:
            raise ValueError(f"read of {length} bytes at GPA {gpa:#x} is outside {self.size:#x}")
        return bytes(view)

    def write(self, gpa: int, data: bytes | bytearray | memoryview) -> None:
        """Copy ``data`` to ``gpa``."""
        view = self.view(gpa, len(data))
        if view is None:
            raise ValueError(
                f"write of {len(data)} bytes at GPA {gpa:#x} is outside {self.size:#x}"
            )
        view[:] = data
