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
    "MAX_REPLAY_BYTES",
    "MAX_SAMPLE_MS",
    "MAX_SIM_CALLS",
    "MAX_TIMEOUT_S",
    "MIN_GUEST_MEMORY_MIB",
]

#: ``run --backend sim --calls``: about a minute and 600 MB.
MAX_SIM_CALLS: Final = 1_000_000
#: ``run --backend kvm --iterations``: calls per case (and per sender for ``--scenario scale``).
MAX_ITERATIONS: Final = 10_000
#: ``run --backend kvm --timeout``, seconds.
MAX_TIMEOUT_S: Final = 3600.0
#: ``run --guest --memory``, MiB of guest RAM.
MIN_GUEST_MEMORY_MIB: Final = 2
MAX_GUEST_MEMORY_MIB: Final = 4096
#: ``bench``: cells in one sweep (the full default sweep has 2,280; each takes ``--repeat``
#: samples of ``--sample-ms``).
MAX_BENCH_CELLS: Final = 20_000
#: ``bench`` / ``replay --repeat``: timed samples per cell.
MAX_BENCH_REPEAT: Final = 100
#: ``bench`` / ``replay --sample-ms``: the minimum length of one sample.
MAX_SAMPLE_MS: Final = 10_000.0
#: ``replay FILE``: the largest trace read.
MAX_REPLAY_BYTES: Final = 256 << 20
#: ``decode --input``: bytes of input (a slow call's input block, or RDX, R8, XMM0-5).
MAX_DECODE_INPUT_BYTES: Final = 64 << 10
