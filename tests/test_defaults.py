"""Every default is defined once, in vpindex.defaults: the library's entry points take theirs
from it (a signature that restated a value would drift from it unnoticed)."""

from __future__ import annotations

import inspect

import pytest

from vpindex import defaults
from vpindex.backends import kvm
from vpindex.backends.kvm.machine import Machine
from vpindex.backends.sim import SimOptions
from vpindex.engine import Partition
from vpindex.vpmap import DEFAULT_STRATEGY, STRATEGIES


def _default(fn: object, name: str) -> object:
    return inspect.signature(fn).parameters[name].default  # type: ignore[arg-type]


def test_the_default_strategy_is_one_of_the_strategies():
    assert DEFAULT_STRATEGY is defaults.DEFAULT_STRATEGY
    assert defaults.DEFAULT_STRATEGY in STRATEGIES


@pytest.mark.parametrize(
    ("fn", "name", "expected"),
    [
        (Partition, "strategy", defaults.DEFAULT_STRATEGY),
        (Machine, "strategy", defaults.DEFAULT_STRATEGY),
        (kvm.run_suite, "vcpus", defaults.KVM_SUITE_VCPUS),
        (kvm.run_suite, "scenario", defaults.KVM_SUITE_SCENARIO),
        (kvm.run_suite, "iterations", defaults.KVM_SUITE_ITERATIONS),
        (kvm.run_suite, "strategy", defaults.DEFAULT_STRATEGY),
        (kvm.run_suite, "timeout", defaults.KVM_SUITE_TIMEOUT_S),
        (kvm.run_guest, "memory_mib", defaults.KVM_GUEST_MEMORY_MIB),
        (kvm.run_guest, "vcpus", defaults.KVM_GUEST_VCPUS),
        (kvm.run_guest, "strategy", defaults.DEFAULT_STRATEGY),
        (kvm.run_guest, "timeout", defaults.KVM_GUEST_TIMEOUT_S),
        (kvm.run_scale, "vcpus", defaults.KVM_SCALE_VCPUS),
        (kvm.run_scale, "calls", defaults.KVM_SCALE_CALLS),
        (kvm.run_scale, "strategy", defaults.DEFAULT_STRATEGY),
        (kvm.run_scale, "timeout", defaults.KVM_SCALE_TIMEOUT_S),
    ],
)
def test_entry_points_take_their_defaults_from_the_one_home(fn, name, expected):
    assert _default(fn, name) == expected


def test_sim_options_take_their_defaults_from_the_one_home():
    opts = SimOptions()
    assert (opts.vcpus, opts.mapping, opts.workload, opts.calls, opts.strategy, opts.seed) == (
        defaults.SIM_VCPUS,
        defaults.SIM_MAPPING,
        defaults.SIM_WORKLOAD,
        defaults.SIM_CALLS,
        defaults.DEFAULT_STRATEGY,
        defaults.SIM_SEED,
    )
