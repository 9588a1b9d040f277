"""The bounds on everything a user can make large from the command line, defined once. Each is
quoted in the error that enforces it.

The figures keep one command within minutes and a few hundred MB on a small machine: the
software partition keeps about 0.6 KB per call it checks and serves about 20,000 calls/s; the
KVM suite's sample area holds 4 bytes per call per case.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "MAX_BENCH_CELLS",
    "MAX_BENCH_REPEAT",
    "MAX_DECODE_INPUT_BYTES",
    "MAX_GUEST_MEMORY_MIB",
    "MAX_ITERATIONS",
    "MAX_LINUX_TIMEOUT_S",
    "MAX_LINUX_VCPUS",
    "MAX_PROFILE_MS",
    "MAX_REPLAY_BYTES",
    "MAX_SAMPLE_MS",
    "MAX_SIM_CALLS",
    "MAX_TIMEOUT_S",
    "MIN_GUEST_MEMORY_MIB",
    "MIN_LINUX_MEMORY_MIB",
    "MIN_PROFILE_MS",
]

#: ``run --backend sim --calls``: about a minute and 600 MB.
MAX_SIM_CALLS: Final = 1_000_000
#: ``run --backend kvm --iterations``: calls per case (and per sender for ``--scenario scale``).
MAX_ITERATIONS: Final = 10_000
#: ``run --backend kvm --timeout``, seconds.
MAX_TIMEOUT_S: Final = 3600.0
#: ``run --guest --memory`` and ``linux run --memory``, MiB of guest RAM.
MIN_GUEST_MEMORY_MIB: Final = 2
MAX_GUEST_MEMORY_MIB: Final = 4096
#: ``linux run --memory``: the least a Linux guest is given (the kernel itself is placed at
#: 16 MiB; the run says when RAM above that cannot hold the kernel and its initramfs).
MIN_LINUX_MEMORY_MIB: Final = 16
#: ``linux run --vcpus``: a boot's time grows with each vCPU when kernel code is emulated
#: (8 vCPUs took minutes on a software-virtualised host); the built kernel allows 16.
MAX_LINUX_VCPUS: Final = 8
#: ``linux build --timeout`` and ``linux run --timeout``, seconds: a stock kernel's boot or a
#: cold kernel build on a loaded host can take many minutes, so the bound is a day.
MAX_LINUX_TIMEOUT_S: Final = 24 * 3600.0
#: ``linux run --profile-ms``: each sample is one extra exit per vCPU, so at most one a
#: millisecond (the profiler also keeps at most a million samples).
MIN_PROFILE_MS: Final = 1.0
MAX_PROFILE_MS: Final = 1000.0
#: ``bench``: cells in one sweep (the full default sweep has 2,280; each takes ``--repeat``
#: samples of ``--sample-ms``).
MAX_BENCH_CELLS: Final = 20_000
#: ``bench`` / ``bench calibrate`` / ``replay --repeat``: timed samples per cell or point.
MAX_BENCH_REPEAT: Final = 100
#: ``bench`` / ``bench calibrate`` / ``replay --sample-ms``: the least length of one sample.
MAX_SAMPLE_MS: Final = 10_000.0
#: ``replay FILE``: the largest trace read.
MAX_REPLAY_BYTES: Final = 256 << 20
#: ``decode --input``: bytes of input (a slow call's input block, or RDX, R8, XMM0-5).
MAX_DECODE_INPUT_BYTES: Final = 64 << 10
