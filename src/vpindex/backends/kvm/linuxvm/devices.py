"""The few port-I/O devices a small Linux guest touches that KVM does not emulate in-kernel.

* An 8250 UART at 0x3F8 (COM1): transmit only. Writes to THR go to the console at once, so the
  line status always says "transmitter empty"; the other registers keep what the guest wrote.
  A THR-empty interrupt (ISA IRQ 4) is raised while the guest has it enabled in IER, which is
  what the tty layer waits for when a process writes to the serial console.
* The i8042 command port 0x64: writing 0xFE (pulse the reset line, what ``reboot=k`` does) ends
  the run; reads say "input buffer empty".
* A CMOS real-time clock at 0x70/0x71 that reads the host's UTC time (BCD, 24-hour) and never
  reports an update in progress (reads of all ones there make Linux poll it 10,000 times).
* Every other port reads as all ones and ignores writes (like an empty ISA bus); such accesses
  are counted so a report can show them.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Final

__all__ = [
    "CMOS_DATA_PORT",
    "CMOS_INDEX_PORT",
    "COM1_IRQ",
    "COM1_PORT",
    "I8042_COMMAND_PORT",
    "I8042_RESET",
    "CmosClock",
    "PortBus",
    "Uart8250",
]

COM1_PORT: Final = 0x3F8
COM1_IRQ: Final = 4
I8042_COMMAND_PORT: Final = 0x64
I8042_RESET: Final = 0xFE
_UART_PORTS: Final = 8
# register offsets
_THR, _IER, _IIR, _LCR, _MCR, _LSR, _MSR, _SCR = 0, 1, 2, 3, 4, 5, 6, 7
_LCR_DLAB: Final = 0x80
_IER_THRI: Final = 0x02
_IIR_NO_INT, _IIR_THRI = 0x01, 0x02
_LSR_THRE_TEMT: Final = 0x60
_MSR_DCD_DSR_CTS: Final = 0xB0
_ALL_ONES: Final = 0xFF
CMOS_INDEX_PORT: Final = 0x70
CMOS_DATA_PORT: Final = 0x71
_CMOS_INDEX_MASK: Final = 0x7F  # bit 7 of the index write is the NMI mask
_CMOS_STATUS_A, _CMOS_STATUS_B, _CMOS_STATUS_D = 0x0A, 0x0B, 0x0D
_CMOS_STATUS_A_VALUE: Final = 0x26  # no update in progress, 32.768 kHz, 1024 Hz rate
_CMOS_STATUS_B_VALUE: Final = 0x02  # BCD, 24-hour
_CMOS_STATUS_D_VALUE: Final = 0x80  # RTC power good
_CMOS_CENTURY: Final = 0x32


def _bcd(value: int) -> int:
    return ((value // 10) << 4) | (value % 10)


class CmosClock:
    """The CMOS RTC's index/data ports: time registers from the host clock, status registers
    saying "valid, no update in progress, BCD, 24-hour", everything else 0."""

    def __init__(self) -> None:
        self._index = 0

    def write(self, port: int, value: int) -> None:
        """OUT to 0x70 selects a register; writes to 0x71 are ignored."""
        if port == CMOS_INDEX_PORT:
            self._index = value & _CMOS_INDEX_MASK

    def read(self) -> int:
        """IN from 0x71: the selected register."""
        t = time.gmtime()
        values = {
            0x00: t.tm_sec,
            0x02: t.tm_min,
            0x04: t.tm_hour,
            0x06: t.tm_wday + 1,
            0x07: t.tm_mday,
            0x08: t.tm_mon,
            0x09: t.tm_year % 100,
            _CMOS_CENTURY: t.tm_year // 100,
        }
        if self._index in values:
            return _bcd(values[self._index])
        return {
            _CMOS_STATUS_A: _CMOS_STATUS_A_VALUE,
            _CMOS_STATUS_B: _CMOS_STATUS_B_VALUE,
            _CMOS_STATUS_D: _CMOS_STATUS_D_VALUE,
        }.get(self._index, 0)


class Uart8250:
    """COM1 as seen through port I/O. ``tx`` receives every transmitted byte; ``set_irq`` is
    called with the new level whenever the interrupt line changes. Thread-safe (any vCPU may
    touch it)."""

    def __init__(self, tx: Callable[[int], None], set_irq: Callable[[bool], None]) -> None:
        self._tx = tx
        self._set_irq = set_irq
        self._lock = threading.Lock()
        self._regs = [0] * _UART_PORTS
        self._dll = self._dlm = 0
        self._thre_pending = False
        self._irq = False

    def write(self, offset: int, value: int) -> None:
        """OUT to COM1 + ``offset``."""
        with self._lock:
            dlab = self._regs[_LCR] & _LCR_DLAB
            if offset == _THR and not dlab:
                self._tx(value)
                self._thre_pending = True
            elif offset == _THR:
                self._dll = value
            elif offset == _IER and dlab:
                self._dlm = value
            elif offset == _IER:
                if value & _IER_THRI and not self._regs[_IER] & _IER_THRI:
                    self._thre_pending = True  # enabling THRI with THR empty interrupts at once
                self._regs[_IER] = value & 0x0F
            elif offset in (_LCR, _MCR, _SCR):
                self._regs[offset] = value
            self._update_irq()

    def read(self, offset: int) -> int:
        """IN from COM1 + ``offset``."""
        with self._lock:
            dlab = self._regs[_LCR] & _LCR_DLAB
            if offset == _THR:
                value = self._dll if dlab else 0
            elif offset == _IER:
                value = self._dlm if dlab else self._regs[_IER]
            elif offset == _IIR:
                if self._thre_pending and self._regs[_IER] & _IER_THRI:
                    value = _IIR_THRI
                    self._thre_pending = False  # reading IIR clears a THR-empty interrupt
                else:
                    value = _IIR_NO_INT
            elif offset == _LSR:
                value = _LSR_THRE_TEMT
            elif offset == _MSR:
                value = _MSR_DCD_DSR_CTS
            else:
                value = self._regs[offset]
            self._update_irq()
            return value

    def _update_irq(self) -> None:
        level = self._thre_pending and bool(self._regs[_IER] & _IER_THRI)
        if level != self._irq:
            self._irq = level
            self._set_irq(level)


class PortBus:
    """Dispatches port I/O exits. ``on_reset`` is called when the guest pulses the reset line."""

    def __init__(self, uart: Uart8250, on_reset: Callable[[], None]) -> None:
        self.uart = uart
        self.cmos = CmosClock()
        self._on_reset = on_reset
        #: accesses to ports nothing is behind, by (direction, port)
        self.unclaimed: Counter[tuple[str, int]] = Counter()

    def out(self, port: int, data: bytes) -> None:
        """An OUT of ``data`` (1, 2 or 4 bytes, little-endian) to ``port``."""
        if COM1_PORT <= port < COM1_PORT + _UART_PORTS:
            self.uart.write(port - COM1_PORT, data[0])
        elif port == I8042_COMMAND_PORT and data[0] == I8042_RESET:
            self._on_reset()
        elif port in (CMOS_INDEX_PORT, CMOS_DATA_PORT):
            self.cmos.write(port, data[0])
        else:
            self.unclaimed["out", port] += 1

    def in_(self, port: int, size: int) -> bytes:
        """An IN of ``size`` bytes from ``port``."""
        if COM1_PORT <= port < COM1_PORT + _UART_PORTS:
            return bytes([self.uart.read(port - COM1_PORT)]) + bytes(size - 1)
        if port == I8042_COMMAND_PORT:
            return bytes(size)
        if port == CMOS_DATA_PORT:
            return bytes([self.cmos.read()]) + bytes(size - 1)
        self.unclaimed["in", port] += 1
        return bytes([_ALL_ONES]) * size
