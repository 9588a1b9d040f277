"""Build the checked-in seed corpus: ``python -m vpindex.fuzz seeds [DIR]`` (default: the
package's ``corpus/``). Seeds are the KVM selftest calls (Linux
tools/testing/selftests/kvm/x86/hyperv_ipi.c and hyperv_tlb_flush.c), the TLFS's layouts at
their edges, and the hostile inputs the hardening tests use."""

from __future__ import annotations

import struct
from dataclasses import replace
from pathlib import Path

from vpindex.abi import (
    MAX_VP_INDEX,
    U64_MAX,
    Control,
    FlushExInput,
    FlushFlags,
    FlushInput,
    GvaRange,
    HvCallCode,
    SendIpiExInput,
    SendIpiInput,
    VpSet,
    encode_gva_list,
)
from vpindex.backends.scenarios import IPI_VECTOR, flush_scenarios, ipi_scenarios
from vpindex.fuzz import CORPUS_DIR
from vpindex.fuzz.oracle import MEMORY_SIZE, Case

__all__ = ["build_seeds", "write_seeds"]

_SETS = {
    "vp2": VpSet.of([2]),
    "vp65": VpSet.of([65]),
    "vp2-65": VpSet.of([2, 65]),
    "all": VpSet.all(),
    "empty": VpSet.of([]),
    "banks-0-5-63": VpSet.of([1, 5 * 64 + 7, 63 * 64 + 63]),
    "every-vp": VpSet.of(range(MAX_VP_INDEX)),
}


def _name(scenario: str) -> str:
    return scenario.replace("/", "_").replace(">", "").replace(",", "+")


def _vpset_seeds() -> dict[str, bytes]:
    out = {name: s.encode() for name, s in _SETS.items()}
    out["all-with-banks"] = struct.pack("<QQQQ", 1, 3, U64_MAX, U64_MAX)
    out["format-2"] = struct.pack("<QQQ", 2, 1, 4)
    out["short-banks"] = struct.pack("<QQQ", 0, 3, 4)
    out["zero-words"] = struct.pack("<QQQQ", 0, 0x8000000000000001, 0, 0)
    out["header-only-short"] = bytes(15)
    return out


def _gva_seeds() -> dict[str, bytes]:
    def entries(words: list[int], count: int | None = None) -> bytes:
        n = len(words) if count is None else count
        return n.to_bytes(2, "little") + struct.pack(f"<{len(words)}Q", *words)

    page = GvaRange(0x40_0000_0000 >> 12).encode()
    return {
        "one-page": entries([page]),
        "fifteen": entries([page + (i << 12) for i in range(15)]),
        "sixteen-max-ranges": entries([GvaRange(i << 12, 0xFFF).encode() for i in range(16)]),
        "non-canonical": entries([0x0000_8000_0000_0000, 0xFFFF_8000_0000_0FFF]),
        "wraps-2-64": entries([0xFFFF_FFFF_FFFF_FFFF, 0xFFFF_FFFF_FFFF_F000]),
        "count-4095-short": entries([page], 4095),
        "list": b"\x02\x00" + encode_gva_list([GvaRange(1, 2), GvaRange(0x7FFF_FFFF_F, 0xFFF)]),
    }


def _hypercall_seeds() -> dict[str, bytes]:
    base = Case(rcx=0, n_vcpus=70, mapping=1)  # reversed: VP 2 -> vCPU 67, VP 65 -> vCPU 4
    out: dict[str, Case] = {}
    for sc in [*ipi_scenarios(), *flush_scenarios()]:
        c = sc.call
        name = _name(sc.name)
        if c.input is not None:
            out[name] = replace(
                base, rcx=c.control, rdx=0x2000, payload=c.input, payload_gpa=0x2000
            )
        else:
            out[name] = replace(base, rcx=c.control, rdx=c.rdx, r8=c.r8, xmm=c.xmm)
    ex = HvCallCode.SEND_SYNTHETIC_CLUSTER_IPI_EX
    every = SendIpiExInput(IPI_VECTOR, 0, _SETS["every-vp"]).encode()
    out["ipi-ex-64-banks"] = replace(
        base, rcx=Control(ex, var_header_qwords=64).encode(), rdx=0x2000, payload=every,
        payload_gpa=0x2000,
    )  # fmt: skip
    flush_list = HvCallCode.FLUSH_VIRTUAL_ADDRESS_LIST
    header = FlushInput(0, int(FlushFlags.ALL_PROCESSORS), 0).encode()
    ranges = encode_gva_list([GvaRange(i << 12, 0xFFF) for i in range(15)])
    out["flush-list-4095-reps"] = replace(
        base, rcx=Control(flush_list, rep_count=4095).encode(), rdx=0x2000, payload=header,
        payload_gpa=0x2000,
    )  # fmt: skip
    out["flush-list-15-full-ranges"] = replace(
        base, rcx=Control(flush_list, rep_count=15).encode(), rdx=0x2000,
        payload=header + ranges, payload_gpa=0x2000,
    )  # fmt: skip
    space_ex = HvCallCode.FLUSH_VIRTUAL_ADDRESS_SPACE_EX
    block = FlushExInput(0, 0, _SETS["vp2-65"]).encode()
    var2 = Control(space_ex, var_header_qwords=2).encode()
    for name, back in (("at-end", len(block)), ("straddles-end", len(block) - 8), ("past", 0)):
        out[f"flush-ex-{name}"] = replace(
            base, rcx=var2, rdx=back, rdx_from_end=True, payload=block,
            payload_gpa=MEMORY_SIZE - len(block),
        )  # fmt: skip
    out["wraps-2-64"] = replace(base, rcx=var2, rdx=0x10008, rdx_from_end=True)
    out["misaligned"] = replace(base, rcx=var2, rdx=0x2004, payload=block, payload_gpa=0x2004)
    out["reserved-bits"] = replace(base, rcx=var2 | 1 << 27)
    out["unknown-code"] = replace(base, rcx=0x0001)
    out["var-mismatch"] = replace(base, rcx=Control(space_ex, var_header_qwords=1).encode())
    # The first finding (fixed in the engine): zero bank words do not skip the vector check.
    zero_banks = struct.pack("<IIQQQQ", 0x3C00FE, 0, 0, 3, 0, 0)
    out["regress-ipi-ex-zero-banks-bad-vector"] = replace(
        base, rcx=Control(ex, var_header_qwords=2).encode(), rdx=0x2000, payload=zero_banks,
        payload_gpa=0x2000,
    )  # fmt: skip
    out["no-features"] = replace(out["ipi_non-ex_fast-2"], features=0)
    out["no-xmm-feature"] = replace(out["ipi_ex_xmm-65"], features=0x7B)
    out["not-enabled"] = replace(out["ipi_non-ex_fast-2"], enabled=False)
    out["recording-platform"] = replace(out["flush-list_ex_xmm-2+65"], recording_platform=True)
    for i, strategy in enumerate(range(6)):
        out[f"strategy-{i}-sparse"] = replace(
            out["ipi_ex_slow-2+65"], strategy=strategy, mapping=3, map_seed=i
        )
    return {name: case.to_bytes() for name, case in out.items()}


def build_seeds() -> dict[str, dict[str, bytes]]:
    """target -> {seed name: bytes}."""
    sets = _SETS
    flags = int(FlushFlags.ALL_VIRTUAL_ADDRESS_SPACES)
    return {
        "vpset": _vpset_seeds(),
        "flush": {
            "to-vp2": FlushInput(0, flags, 4).encode(),
            "all-processors": FlushInput(0, flags | 1, 0).encode(),
            "mask-0": FlushInput(0, 0, 0).encode(),
            "short": bytes(23),
        },
        "flush_ex": {
            **{name: FlushExInput(0, flags, s).encode() for name, s in sets.items()},
            "short-set": bytes(16) + struct.pack("<QQ", 0, 1),
        },
        "ipi": {
            "to-vp2": SendIpiInput(IPI_VECTOR, 0, 4).encode(),
            "vector-0xf": SendIpiInput(0xF, 0, 4).encode(),
            "short": bytes(15),
        },
        "ipi_ex": {
            **{name: SendIpiExInput(IPI_VECTOR, 0, s).encode() for name, s in sets.items()},
            "bad-vector-empty": SendIpiExInput(0x1, 0, sets["empty"]).encode(),
        },
        "gva": _gva_seeds(),
        "control": {
            _name(sc.name): sc.call.control.to_bytes(8, "little")
            for sc in [*ipi_scenarios(), *flush_scenarios()]
        }
        | {
            "reserved-bits": (0x1F << 27 | 0xF << 44 | 0xF << 60 | 0x15).to_bytes(8, "little"),
            "max-fields": (0x0FFF_0FFF_07FF_FFFF).to_bytes(8, "little"),
        },
        "hypercall": _hypercall_seeds(),
    }


def write_seeds(root: Path = CORPUS_DIR) -> int:
    """Replace each target's directory under ``root`` with its seeds; print one line per
    target. Returns 0."""
    for target, seeds in build_seeds().items():
        d = root / target
        d.mkdir(parents=True, exist_ok=True)
        for old in d.iterdir():
            old.unlink()
        for name, data in seeds.items():
            (d / name).write_bytes(data)
        print(f"{target}: {len(seeds)} seeds in {d}")
    return 0
