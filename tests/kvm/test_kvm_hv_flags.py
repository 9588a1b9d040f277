"""``vpindex run --backend kvm --hv FLAGS``: the partition grants only what the flags name; the
calls they grant must succeed and the calls they do not grant must be refused with
HV_STATUS_ACCESS_DENIED (KVM's answer when the guest lacks the CPUID feature bit)."""

from __future__ import annotations

import pytest

from vpindex.abi import Control, Features, HvCallCode, HvStatus, hypercall_result
from vpindex.abi.hvflags import parse_hv_flags
from vpindex.backends.kvm import run_suite
from vpindex.backends.kvm import runner as runner_module
from vpindex.backends.kvm.guests.suite_layout import Kind
from vpindex.backends.kvm.runner import DENIED_PREFIX, DENIED_RAX, granted, run_ipi
from vpindex.backends.kvm.suite_machine import flush_cases, ipi_cases

_VP_TO_CPU = {0: 0, 2: 1, 65: 2}
_IPI_CODES = {HvCallCode.SEND_SYNTHETIC_CLUSTER_IPI, HvCallCode.SEND_SYNTHETIC_CLUSTER_IPI_EX}


def _code(case: runner_module.CaseSpec) -> HvCallCode:
    assert case.call is not None
    return HvCallCode(Control.decode(case.call.control).code)


def _cases() -> list[runner_module.CaseSpec]:
    return [
        *ipi_cases(_VP_TO_CPU, frozenset({0, 1, 2})),
        *flush_cases(_VP_TO_CPU, frozenset({1, 2})),
    ]


def test_granted_runs_what_the_flags_allow_and_checks_the_rest_is_refused() -> None:
    cases = _cases()
    planned = granted(cases, parse_hv_flags("hv-vpindex,hv-ipi,hv-xmm-input").features)
    assert len(planned) == len(cases)  # nothing dropped: every flush becomes a refusal check
    allowed = [c for c in planned if not c.name.startswith(DENIED_PREFIX)]
    denied = [c for c in planned if c.name.startswith(DENIED_PREFIX)]
    assert {_code(c) for c in allowed} == _IPI_CODES
    assert all(c.expect_rax == hypercall_result(HvStatus.SUCCESS, 0) for c in allowed)
    assert {_code(c) for c in denied} == set(HvCallCode) - _IPI_CODES
    assert DENIED_RAX == HvStatus.ACCESS_DENIED == 6
    for case in denied:
        assert case.kind == Kind.CALL_ONLY and case.targets == frozenset()
        assert case.expect_rax == DENIED_RAX  # no rep completed, even for the LIST calls
    assert granted(cases, Features.all()) == cases
    # XMM input not offered: an XMM call of a granted code would #UD, so it is left out ...
    no_xmm = granted(cases, Features.all() & ~Features.XMM_HYPERCALL_INPUT)
    assert 0 < len(no_xmm) < len(cases)
    assert not any(c.name.startswith(DENIED_PREFIX) for c in no_xmm)
    # ... but the access check comes first: an XMM call of a denied code is still refused.
    ipi_no_xmm = granted(cases, parse_hv_flags("hv-vpindex,hv-ipi").features)
    denied_xmm = [c for c in ipi_no_xmm if c.name.startswith(DENIED_PREFIX) and c.call.xmm]
    assert denied_xmm and all(c.expect_rax == DENIED_RAX for c in denied_xmm)
    assert not any(c.call.xmm for c in ipi_no_xmm if not c.name.startswith(DENIED_PREFIX))


@pytest.mark.parametrize(
    ("flags", "granted_group", "denied_group"),
    [
        ("hv-vpindex,hv-ipi", "ipi/", "denied/flush-to-halted/"),
        ("hv-vpindex,hv-tlbflush", "flush-to-halted/", "denied/ipi/"),
    ],
)
def test_suite_serves_the_granted_calls_and_refuses_the_others(
    flags: str, granted_group: str, denied_group: str
) -> None:
    iterations = 3
    report = run_suite(scenario="ipi", iterations=iterations, hv=parse_hv_flags(flags))
    assert report.ok, [c for c in report.cases if not c.passed]
    names = [c.name for c in report.cases]
    served = [n for n in names if n.startswith(granted_group)]
    refused = [n for n in names if n.startswith(denied_group)]
    assert served and refused
    assert not any(n.startswith(DENIED_PREFIX) and not n.startswith(denied_group) for n in names)
    assert report.extra["statuses"]["ACCESS_DENIED"] == iterations * len(refused)
    assert report.extra["hv_flags"] == flags.split(",")


def test_a_denied_call_that_is_served_fails_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """Control: plan the cases for hv-vpindex,hv-ipi but let the partition grant everything.
    The flushes the plan expects refused are served with HV_STATUS_SUCCESS, and each of those
    cases fails on its RAX."""
    ipi_only = parse_hv_flags("hv-vpindex,hv-ipi").features
    real = runner_module.granted
    monkeypatch.setattr(runner_module, "granted", lambda cases, _features: real(cases, ipi_only))
    iterations = 2
    results, _ = run_ipi(3, [0, 2, 65], iterations, "adaptive", 60.0, Features.all())
    denied = [c for c in results if c.name.startswith(DENIED_PREFIX)]
    assert denied and not any(c.passed for c in denied)
    for case in denied:
        assert case.details["bad_status"] == iterations
        assert int(case.details["last_rax"], 16) == hypercall_result(HvStatus.SUCCESS, 0)
    assert all(c.passed for c in results if not c.name.startswith(DENIED_PREFIX))
