"""The kernel command line of the vpindex guest kernel (the one ``kernel.config`` builds).

Words come in groups so a VMM can see why each is there:

- :data:`CONSOLE_WORDS`: the 8250 UART at :data:`UART_PORT` as console from the first
  instruction (``earlycon``), one UART only, and ``/dev/kmsg`` writes never rate-limited
  (``/init`` writes its report there).
- :data:`BOOT_WORDS`: start ``/init`` from the initramfs; reboot through the keyboard
  controller (``reboot=k``: the kernel writes 0xFE to port 0x64, the VMM's end-of-run signal),
  also right after a panic (``panic=-1``); skip work that is slow when kernel code is emulated:
  delay-loop calibration (``lpj=``), the TSC stability watchdog and the timer check; and a
  periodic local-APIC timer instead of the TSC-deadline one (``lapic=notscdeadline``). A
  TSC-deadline timer has no periodic mode, so Linux emulates the periodic tick with one-shot
  events and, when it falls behind, replays every missed tick in a loop with interrupts off
  (``tick_handle_periodic``, kernel/time/tick-common.c): when one tick's work takes longer than
  a tick period -- emulated kernel code on a loaded host -- that loop never ends and the boot
  stalls for good, typically right after the clocksource switch. A periodic timer drops the
  missed ticks instead. Also skipped: the write-protection of the kernel image (``rodata=off``:
  ``mark_rodata_ro`` rewrites the kernel mapping page by page, splitting its 2 MiB pages, and
  flushes every CPU's TLB, which a shadow-paging host makes very slow -- a quarter of the time
  to /init on this project's host) and the poisoning and freeing of the initramfs pages
  (``retain_initrd``; the initramfs is under 1 MiB). Sources: ``init/main.c``
  (``mark_readonly``) and ``init/initramfs.c`` in Linux 6.12.

Words that exist only because of a particular host (on this project's PVM ``/dev/kvm``: hiding
CPU features its instruction emulator fails on) are not here: they live with that host's other
workarounds in the VMM (``backends/kvm/host_fixes.py``), which adds them.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "BOOT_WORDS",
    "COMMAND_LINE_MAX",
    "CONSOLE_WORDS",
    "UART_PORT",
    "base_cmdline_words",
    "kernel_cmdline",
]

UART_PORT = 0x3F8
"""The I/O port of the guest's console UART (COM1, ttyS0)."""

CONSOLE_WORDS: tuple[str, ...] = (
    "console=ttyS0",
    f"earlycon=uart8250,io,{UART_PORT:#x},115200",
    "8250.nr_uarts=1",
    "printk.devkmsg=on",
)
BOOT_WORDS: tuple[str, ...] = (
    "rdinit=/init",
    "reboot=k",
    "panic=-1",
    "lpj=5192244",
    "tsc=reliable",
    "no_timer_check",
    "lapic=notscdeadline",
    "rodata=off",
    "retain_initrd",
)
COMMAND_LINE_MAX = 2047
"""x86 Linux keeps at most COMMAND_LINE_SIZE (2048) bytes of command line, NUL included."""


def base_cmdline_words() -> list[str]:
    """The console and boot words every run starts from. Host-specific words are not here:
    they come from the VMM's host fixes."""
    return [*CONSOLE_WORDS, *BOOT_WORDS]


def kernel_cmdline(*groups: Iterable[str]) -> str:
    """The words of every group joined by spaces. Raises ValueError when the result is longer
    than :data:`COMMAND_LINE_MAX` (the kernel would cut it silently) or a word is empty or
    holds whitespace or an unprintable character."""
    words = [word for group in groups for word in group]
    for word in words:
        if not word or not word.isprintable() or any(c.isspace() for c in word):
            raise ValueError(f"bad kernel command-line word {word!r}")
    line = " ".join(words)
    size = len(line.encode())
    if size > COMMAND_LINE_MAX:
        raise ValueError(f"kernel command line is {size} bytes; the limit is {COMMAND_LINE_MAX}")
    return line
