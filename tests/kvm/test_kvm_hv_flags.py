"""``vpindex run --backend kvm --hv FLAGS``: the partition grants only what the flags name, and
the suite runs only the cases those grant."""

from __future__ import annotations

from vpindex.abi import Control, Features, HvCallCode
from vpindex.abi.hvflags import parse_hv_flags
from vpindex.backends.kvm import run_suite
from vpindex.backends.kvm.runner import granted
from vpindex.backends.kvm.suite_machine import flush_cases, ipi_cases


def test_granted_keeps_only_calls_the_features_allow() -> None:
    vp_to_cpu = {0: 0, 2: 1, 65: 2}
    cases = [
        *ipi_cases(vp_to_cpu, frozenset({0, 1, 2})),
        *flush_cases(vp_to_cpu, frozenset({1, 2})),
    ]
    ipi_only = granted(cases, parse_hv_flags("hv-vpindex,hv-ipi").features)
    codes = {HvCallCode(Control.decode(c.call.control).code) for c in ipi_only if c.call}
    assert codes == {
        HvCallCode.SEND_SYNTHETIC_CLUSTER_IPI,
        HvCallCode.SEND_SYNTHETIC_CLUSTER_IPI_EX,
    }
    assert len(granted(cases, Features.all())) == len(cases)
    no_xmm = granted(cases, Features.all() & ~Features.XMM_HYPERCALL_INPUT)
    assert 0 < len(no_xmm) < len(cases)


def test_suite_with_ipi_only_runs_and_passes_the_ipi_cases() -> None:
    report = run_suite(scenario="ipi", iterations=3, hv=parse_hv_flags("hv-vpindex,hv-ipi"))
    assert report.ok, [c for c in report.cases if not c.passed]
    names = [c.name for c in report.cases]
    assert any(n.startswith("ipi/") for n in names)
    assert not any(n.startswith("flush-to-halted/") for n in names)
    assert report.extra["hv_flags"] == ["hv-vpindex", "hv-ipi"]
