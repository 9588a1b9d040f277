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

- :data:`STOCK_WORDS`: added for a stock distribution kernel (Debian's cloud kernel, see
  ``stock.py``), whose configuration turns on much that the project's own kernel leaves out
  and whose every instruction runs emulated on a software-virtualising host. Each word, its
  reason and where Linux 6.12 reads it, is in :data:`STOCK_WORDS_WHY`.

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
    "SLOW_INITCALLS",
    "STOCK_WORDS",
    "STOCK_WORDS_WHY",
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
SLOW_INITCALLS: tuple[str, ...] = (
    "jent_mod_init",
    "init_kprobe_trace",
    "load_system_certificate_list",
    "bpf_tcp_ca_kfunc_init",
    "bpf_dummy_struct_ops_init",
)
"""Initcalls of Debian's 6.12 cloud kernel that a stock boot skips (``initcall_blacklist=``,
``init/main.c``), each seconds to tens of guest seconds when kernel code is emulated: the
jitter-entropy RNG's start-up health test (``crypto/jitterentropy-kcapi.c``: thousands of
timed memory-access rounds); kprobe trace events' boot set-up (``kernel/trace/trace_kprobe.c``:
waits on ``event_mutex`` while a kworker updates every trace event); the built-in X.509
certificates (``certs/system_keyring.c``: without them a module's signature cannot be checked,
so the msr module loads unverified, which ``CONFIG_MODULE_SIG`` without ``MODULE_SIG_FORCE``
allows, tainting the kernel); and the two BPF struct_ops registrations
(``net/ipv4/bpf_tcp_ca.c``, ``net/bpf/bpf_dummy_struct_ops.c``): ``register_bpf_struct_ops``
looks up a stub function for each function-pointer member with ``btf_find_by_name_kind``, a
linear scan of the whole kernel BTF (``kernel/bpf/bpf_struct_ops.c``, ``kernel/bpf/btf.c``),
plus two for the struct's own types: about 20 scans for ``tcp_congestion_ops``, 5 for
``bpf_dummy_ops``. Nothing the guest's
``/init`` uses depends on any of them."""

STOCK_WORDS_WHY: dict[str, str] = {
    "mitigations=off": "no speculation mitigations: less boot-time text patching, no extra "
    "work on kernel entry and exit (kernel/cpu.c)",
    "nopti": "no page-table isolation: one page table per process, half the CR3 switches "
    "(arch/x86/mm/pti.c), each costly under a shadow MMU",
    "io_delay=none": "no port 0x80 write after legacy port I/O (arch/x86/kernel/io_delay.c): "
    "each would be a VM exit",
    "pci=off": "the VMM has no PCI bus: no config-space probing through ports 0xCF8/0xCFC "
    "(arch/x86/pci/common.c)",
    "cryptomgr.notests": "no crypto self-tests when algorithms register (crypto/testmgr.c)",
    "init_on_alloc=0": "Debian turns on INIT_ON_ALLOC_DEFAULT_ON: do not zero every "
    "allocated page (mm/mm_init.c)",
    "nowatchdog": "no soft/hard lockup detectors (kernel/watchdog.c): a kernel running "
    "emulated can trip them, and their reports send NMIs",
    "lsm=capability": "of Debian's CONFIG_LSM list only capability: no Landlock, Yama, "
    "AppArmor, SELinux, TOMOYO, BPF LSM or IPE set-up (security/security.c; the early "
    "lockdown LSM and the always-last IMA/EVM stay, with no policy)",
    "initcall_blacklist=" + ",".join(SLOW_INITCALLS): "skip the slow initcalls of "
    "SLOW_INITCALLS (init/main.c)",
}
STOCK_WORDS: tuple[str, ...] = tuple(STOCK_WORDS_WHY)
"""The words a stock distribution kernel boots with on top of the base words (and the VMM's
host words): see :data:`STOCK_WORDS_WHY` for the reason of each. ``nokaslr`` and ``no5lvl``
are not among them: the VMM enters the vmlinux at its 64-bit entry point with 4-level paging,
so the bzImage decompressor that reads them never runs, and without its ``KASLR_FLAG`` in the
zero page the kernel does not randomise its memory layout (``arch/x86/include/asm/setup.h``)."""

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
