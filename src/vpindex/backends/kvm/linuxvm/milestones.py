"""Boot milestones recognised in a Linux kernel's console output, timed on the host.

============== =================================================================
milestone      the console line that marks it
============== =================================================================
first_console  the first byte on the serial console
smp_up         ``smp: Brought up N node(s), M CPU(s)``
init           ``Run /init as init process`` (the kernel is about to exec /init)
end            the guest asked for a reset (or the run stopped otherwise)
============== =================================================================
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from typing import Final

__all__ = ["MILESTONES", "Console"]

MILESTONES: Final = ("first_console", "smp_up", "init", "end")
_PATTERNS: Final = {
    "smp_up": re.compile(rb"smp: Brought up \d+ nodes?, \d+ CPUs?"),
    "init": re.compile(rb"Run /\S+ as init process"),
}
#: How much console output a run keeps (the rest is streamed, not stored).
MAX_CONSOLE_BYTES: Final = 4 << 20


class Console:
    """Collects serial output, stamps milestones (seconds since :meth:`start`), streams each
    byte to ``sink`` and calls ``on_milestone(name)`` when one is reached; ``extra`` adds
    named line patterns to watch for."""

    def __init__(
        self,
        sink: Callable[[bytes], None] | None = None,
        on_milestone: Callable[[str], None] | None = None,
        extra: dict[str, re.Pattern[bytes]] | None = None,
    ) -> None:
        self._sink = sink
        self._on_milestone = on_milestone
        self._patterns = {**_PATTERNS, **(extra or {})}
        self._lock = threading.Lock()
        self._line = bytearray()
        self.text = bytearray()
        self.t0 = time.perf_counter()
        self.times: dict[str, float] = {}

    def start(self) -> None:
        """Time zero: the first KVM_RUN."""
        self.t0 = time.perf_counter()

    def mark(self, name: str) -> None:
        """Stamp ``name`` now (only its first occurrence counts)."""
        if name not in self.times:
            self.times[name] = round(time.perf_counter() - self.t0, 3)
            if self._on_milestone is not None:
                self._on_milestone(name)

    def put(self, byte: int) -> None:
        """One byte from the UART."""
        with self._lock:
            if "first_console" not in self.times:
                self.mark("first_console")
            if len(self.text) < MAX_CONSOLE_BYTES:
                self.text.append(byte)
            if byte == 0x0A:
                line = bytes(self._line)
                self._line.clear()
                for name, pattern in self._patterns.items():
                    if name not in self.times and pattern.search(line):
                        self.mark(name)
            elif len(self._line) < 4096:
                self._line.append(byte)
        if self._sink is not None:
            self._sink(bytes([byte]))

    def tail(self, lines: int = 20) -> list[str]:
        """The last ``lines`` console lines."""
        text = bytes(self.text).decode("utf-8", "replace").replace("\r", "")
        return text.rstrip("\n").split("\n")[-lines:] if text else []
