"""vpindex.backends.sim: the embedded partition passes every case for each mapping, workload
and a few strategies, and really checks what it claims to."""

from __future__ import annotations

import random

import pytest

from vpindex.backends import sim
from vpindex.backends.sim import MAPPINGS, WORKLOADS, SimOptions, make_vp_indexes, run_sim


def _assert_all_passed(report) -> None:
    failed = [c for c in report.cases if not c.passed]
    assert not failed, failed
    assert report.failed == 0
    assert report.passed == len(report.cases)


@pytest.mark.parametrize("mapping", MAPPINGS)
@pytest.mark.parametrize("strategy", ["adaptive", "scan", "dense", "mismatch"])
def test_run_sim_passes(mapping, strategy):
    report = run_sim(SimOptions(vcpus=6, mapping=mapping, strategy=strategy, calls=200, seed=3))
    _assert_all_passed(report)
    names = {c.name for c in report.cases}
    assert {"msr/vp-index-read", "msr/vp-index-guest-write-gp", "msr/vp-index-swap"} <= names
    assert sum(1 for n in names if n.startswith("selftest/")) == 30
    assert "workload/per-vcpu-totals" in names
    assert report.calls >= 200  # the workload, plus the MSR-swap check call
    assert report.backend == "sim"
    assert report.strategy == strategy


@pytest.mark.parametrize("workload", WORKLOADS)
def test_run_sim_workloads(workload):
    report = run_sim(SimOptions(vcpus=5, workload=workload, calls=150, seed=1))
    _assert_all_passed(report)
    codes = set(report.extra["by_code"])
    if workload == "ipi":
        assert codes <= {"SEND_SYNTHETIC_CLUSTER_IPI", "SEND_SYNTHETIC_CLUSTER_IPI_EX"}
    elif workload == "flush":
        assert not codes & {"SEND_SYNTHETIC_CLUSTER_IPI", "SEND_SYNTHETIC_CLUSTER_IPI_EX"}
    assert report.extra["statuses"] == {"SUCCESS": 150}


def test_run_sim_single_vcpu_and_explicit_indexes():
    _assert_all_passed(run_sim(SimOptions(vcpus=1, calls=50)))
    report = run_sim(SimOptions(vcpus=3, vp_indexes=[4095, 0, 64], calls=100))
    _assert_all_passed(report)
    assert report.extra["mapping"] == "explicit"


def test_run_sim_sparse_uses_ex_calls():
    report = run_sim(SimOptions(vcpus=16, mapping="sparse", calls=300, seed=7))
    _assert_all_passed(report)
    assert any(name.endswith("_EX") for name in report.extra["by_code"])


def test_run_sim_trace_out_lines():
    trace: list[str] = []
    run_sim(SimOptions(vcpus=3, calls=20, trace_out=trace))
    assert any("kvm_hv_hypercall: code 0x" in line for line in trace)
    assert any("kvm_hv_hypercall_done: result 0x" in line for line in trace)
    assert sum("kvm_hv_hypercall_done" in line for line in trace) >= 20


def test_run_sim_bad_options():
    with pytest.raises(ValueError):
        run_sim(SimOptions(workload="nope"))
    with pytest.raises(ValueError):
        run_sim(SimOptions(vcpus=3, vp_indexes=[1, 2]))
    with pytest.raises(ValueError):
        run_sim(SimOptions(vcpus=3, vp_indexes=[1, 1, 2]))
    with pytest.raises(ValueError):
        make_vp_indexes(3, "nope", random.Random(0))


def test_make_vp_indexes():
    rng = random.Random(5)
    assert make_vp_indexes(4, "identity", rng) == [0, 1, 2, 3]
    shuffled = make_vp_indexes(50, "shuffled", rng)
    assert sorted(shuffled) == list(range(50))
    sparse = make_vp_indexes(50, "sparse", rng, max_vp_index=128)
    assert len(set(sparse)) == 50
    assert all(0 <= v < 128 for v in sparse)


def test_run_sim_detects_a_wrong_engine(monkeypatch):
    """The sim is a real check: an engine that drops the last target of every call fails."""
    from vpindex.engine import Partition

    real = Partition.hypercall

    def lossy(self, vcpu, rcx, rdx=0, r8=0, xmm=None):
        rax = real(self, vcpu, rcx, rdx, r8, xmm)
        ev = self.events[-1]
        if ev.targets and (rcx & 0xFFFF) in (0x0B, 0x15):
            self.vcpu(ev.targets[-1]).ipis.pop()
            self.events[-1] = type(ev)(
                ev.vcpu, ev.rcx, ev.rdx, ev.r8, ev.result, ev.targets[:-1], ev.start_ns,
                ev.duration_ns, ev.header, ev.fault,
            )  # fmt: skip
        return rax

    monkeypatch.setattr(sim.Partition, "hypercall", lossy)
    report = run_sim(SimOptions(vcpus=4, workload="ipi", calls=50))
    assert report.failed > 0
    assert any(c.name.startswith("selftest/ipi") and not c.passed for c in report.cases)
