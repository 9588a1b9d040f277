"""The engine's event log: one record per hypercall, printable as KVM tracepoint lines.

The text form follows ``trace-cmd report`` output of KVM's Hyper-V events (current field
layout), so ``vpindex replay`` reads vpindex's own traces and real KVM traces alike::

    vcpu-0  [000]     0.000123: kvm_hv_hypercall: code 0x15 slow var_cnt 0x2 rep_cnt 0x0 \
        idx 0x0 in 0x10000 out 0x0
    vcpu-0  [000]     0.000123: kvm_hv_send_ipi_ex: vector fe format 0 valid_bank_mask 0x3
    vcpu-0  [000]     0.000125: kvm_hv_hypercall_done: result 0x0
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vpindex.abi import CODE_MASK, FAST_BIT, Control, HvCallCode, HvStatus, result_status

__all__ = ["HypercallEvent", "format_event"]


@dataclass(frozen=True, slots=True)
class HypercallEvent:
    """One served hypercall.

    Attributes:
        vcpu: the calling vCPU index.
        rcx, rdx, r8: the registers as the guest set them.
        result: the RAX value returned (0 with ``fault`` set when the call faulted).
        targets: the vCPU indexes the call reached, ascending (empty on failure).
        start_ns: ``time.perf_counter_ns()`` when the call arrived.
        duration_ns: time spent serving it.
        header: the decoded header fields a KVM tracepoint prints for this call (empty if the
            header could not be read).
        fault: the injected exception vector, or None.
    """

    vcpu: int
    rcx: int
    rdx: int
    r8: int
    result: int
    targets: tuple[int, ...]
    start_ns: int
    duration_ns: int
    header: dict[str, int] = field(default_factory=dict)
    fault: int | None = None

    @property
    def code(self) -> int:
        return self.rcx & CODE_MASK

    @property
    def status(self) -> int:
        return result_status(self.result)

    @property
    def fast(self) -> bool:
        return bool(self.rcx & FAST_BIT)

    def to_json(self) -> dict[str, Any]:
        return {
            "vcpu": self.vcpu,
            "code": self.code,
            "call": _call_name(self.code),
            "fast": self.fast,
            "status": HvStatus.describe(self.status),
            "result": self.result,
            "targets": list(self.targets),
            "duration_ns": self.duration_ns,
            "fault": self.fault,
        }


def _call_name(code: int) -> str:
    try:
        return HvCallCode(code).name
    except ValueError:
        return f"0x{code:04x}"


def _tracepoint(code: int, h: dict[str, int]) -> tuple[str, str] | None:
    if not h:
        return None
    if code in (HvCallCode.FLUSH_VIRTUAL_ADDRESS_SPACE, HvCallCode.FLUSH_VIRTUAL_ADDRESS_LIST):
        return "kvm_hv_flush_tlb", (
            f"processor_mask 0x{h['processor_mask']:x} address_space "
            f"0x{h['address_space']:x} flags 0x{h['flags']:x} "
        )
    if code in (
        HvCallCode.FLUSH_VIRTUAL_ADDRESS_SPACE_EX,
        HvCallCode.FLUSH_VIRTUAL_ADDRESS_LIST_EX,
    ):
        return "kvm_hv_flush_tlb_ex", (
            f"valid_bank_mask 0x{h['valid_bank_mask']:x} format 0x{h['format']:x} "
            f"address_space 0x{h['address_space']:x} flags 0x{h['flags']:x} "
        )
    if code == HvCallCode.SEND_SYNTHETIC_CLUSTER_IPI:
        return "kvm_hv_send_ipi", (
            f"vector {h['vector']:x} processor_mask 0x{h['processor_mask']:x}"
        )
    if code == HvCallCode.SEND_SYNTHETIC_CLUSTER_IPI_EX:
        return "kvm_hv_send_ipi_ex", (
            f"vector {h['vector']:x} format {h['format']:x} "
            f"valid_bank_mask 0x{h['valid_bank_mask']:x}"
        )
    return None


def format_event(event: HypercallEvent, epoch_ns: int = 0) -> list[str]:
    """The tracepoint lines KVM would emit for ``event`` (times relative to ``epoch_ns``)."""
    ctl = Control.decode(event.rcx)
    seconds = (event.start_ns - epoch_ns) / 1e9
    stamp = f"vcpu-{event.vcpu:<5} [{event.vcpu % 1000:03d}] {seconds:12.6f}: "
    lines = [
        stamp
        + (
            f"kvm_hv_hypercall: code 0x{ctl.code:x} {'fast' if ctl.fast else 'slow'} "
            f"var_cnt 0x{ctl.var_header_qwords:x} rep_cnt 0x{ctl.rep_count:x} "
            f"idx 0x{ctl.rep_start:x} in 0x{event.rdx:x} out 0x{event.r8:x}"
        )
    ]
    tp = _tracepoint(event.code, event.header)
    if tp is not None:
        lines.append(f"{stamp}{tp[0]}: {tp[1]}")
    if event.fault is None:
        lines.append(f"{stamp}kvm_hv_hypercall_done: result 0x{event.result:x}")
    return lines
