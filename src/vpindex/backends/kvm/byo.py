"""Bring-your-own guest: a flat 64-bit image run on every vCPU under the machine contract.

The image is loaded at ``entry``'s load address (GPA 0x100000) and every vCPU starts there at
CPL0 in long mode with RDI = its vCPU index; see :mod:`.contract` for the ports and MSRs.
"""

from __future__ import annotations

import os
from typing import Any

from vpindex.backends.kvm import layout
from vpindex.backends.kvm.errors import KvmError
from vpindex.backends.kvm.machine import Machine
from vpindex.backends.report import CaseResult, RunReport

__all__ = ["run_guest_impl"]

_MIB = 1 << 20
_MIN_MIB = 2


def run_guest_impl(
    path: str,
    *,
    entry: int,
    memory_mib: int,
    vcpus: int,
    vp_indexes: list[int] | None,
    strategy: str,
    timeout: float,
) -> RunReport:
    """See :func:`vpindex.backends.kvm.run_guest`."""
    try:
        with open(path, "rb") as f:
            image = f.read()
    except OSError as e:
        raise KvmError(f"cannot read guest image {path}: {e.strerror}") from None
    if memory_mib < _MIN_MIB:
        raise ValueError(f"memory must be at least {_MIN_MIB} MiB, got {memory_mib}")
    size = memory_mib * _MIB
    load = layout.GUEST_LOAD_ADDRESS
    if load + len(image) > size:
        raise KvmError(f"{path}: {len(image)} bytes do not fit at {load:#x} in {memory_mib} MiB")
    if not load <= entry < size:
        raise ValueError(f"entry {entry:#x} is outside guest RAM above {load:#x}")
    mapping = dict(enumerate(vp_indexes)) if vp_indexes is not None else None
    if vp_indexes is not None and len(vp_indexes) != vcpus:
        raise ValueError(f"{len(vp_indexes)} VP indexes given for {vcpus} vCPUs")
    with Machine(vcpus=vcpus, memory_size=size, vp_indexes=mapping, strategy=strategy) as m:
        m.load(load, image)
        for i in range(vcpus):
            m.set_entry(i, entry)
        m.run(timeout=timeout)
        part = m.partition
        per_vcpu: list[dict[str, Any]] = [
            {
                "index": t.index,
                "vp_index": part.vp_index_of(t.index),
                "console": t.console.decode("utf-8", "replace"),
                "exit_code": t.exit_code,
                "ipis": list(part.vcpu(t.index).ipis),
                "hypercalls": part.vcpu(t.index).hypercalls,
            }
            for t in m.threads
        ]
        report = RunReport(
            backend="kvm",
            vcpus=vcpus,
            strategy=strategy,
            vp_indexes=[v["vp_index"] for v in per_vcpu],
        )
        report.calls = sum(v["hypercalls"] for v in per_vcpu)
        report.cases = [
            CaseResult(
                f"guest/{os.path.basename(path)}/vcpu{v['index']}",
                v["exit_code"] == 0,
                {"exit_code": v["exit_code"]},
            )
            for v in per_vcpu
        ]
        report.extra["vcpus"] = per_vcpu
        report.extra["setup_s"] = round(m.setup_s, 4)
        report.extra["run_s"] = round(m.run_s, 4)
        report.failed_override = sum(1 for v in per_vcpu if v["exit_code"] != 0)
        return report
