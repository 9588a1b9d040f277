"""Plain helpers several test modules import (fixtures live in conftest.py).

The input blocks are packed here with :mod:`struct`, independently of :mod:`vpindex.abi`'s
encoders, so the tests that use them check those encoders and the engine's decoders against
a second, hand-written reading of the TLFS layouts.
"""

from __future__ import annotations

import struct

from vpindex.engine import Partition

__all__ = ["assert_one_error_line", "effects", "ipi", "ipi_ex", "q"]


def q(*words: int) -> bytes:
    """``words`` as little-endian u64s (an input block, a GVA list, XMM contents)."""
    return struct.pack(f"<{len(words)}Q", *words)


def ipi(vector: int, mask: int) -> bytes:
    """HV_SEND_IPI: Vector u32, Reserved u32 (zero), ProcessorMask u64."""
    return struct.pack("<IIQ", vector, 0, mask)


def ipi_ex(vector: int, *vp_set: int) -> bytes:
    """HV_SEND_IPI_EX: Vector u32, Reserved u32 (zero), then the HV_VP_SET's u64 words
    (Format, ValidBanksMask, the bank words)."""
    return struct.pack(f"<II{len(vp_set)}Q", vector, 0, *vp_set)


def effects(p: Partition) -> list[tuple[int, int]]:
    """Per vCPU of ``p``: (IPIs delivered, flushes recorded) so far."""
    return [(len(p.vcpu(v).ipis), len(p.vcpu(v).flushes)) for v in range(p.n_vcpus)]


def assert_one_error_line(code: int, out: str, err: str, fragment: str, status: int = 2) -> None:
    """The CLI's error contract: exit ``status`` (2: a user's mistake), nothing on stdout, one
    ``error: ...`` line on stderr holding ``fragment``, no traceback or usage box."""
    assert code == status, err
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert fragment in err, err
    assert "Traceback" not in err and "╭" not in err
