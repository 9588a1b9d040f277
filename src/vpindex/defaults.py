"""Every default a caller relies on, defined once: the library's functions and the CLI's options
take their defaults from here. Pure constants, no imports beyond ``typing``.

The KVM figures are those of the selftest-equivalent suite (sender VP 0 and receivers VP 2 and
65 need 3 vCPUs) and of the 2018 review's scale case (128 vCPUs).
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "DEFAULT_STRATEGY",
    "FLUSH_CONFIRM",
    "FLUSH_FENCE",
    "FLUSH_PROTOCOLS",
    "KVM_GUEST_MEMORY_MIB",
    "KVM_GUEST_TIMEOUT_S",
    "KVM_GUEST_VCPUS",
    "KVM_SCALE_CALLS",
    "KVM_SCALE_TIMEOUT_S",
    "KVM_SCALE_VCPUS",
    "KVM_SUITE_ITERATIONS",
    "KVM_SUITE_SCENARIO",
    "KVM_SUITE_TIMEOUT_S",
    "KVM_SUITE_VCPUS",
    "LINUX_MEMORY_MIB",
    "LINUX_STOCK_MEMORY_MIB",
    "LINUX_STOCK_TIMEOUT_S",
    "LINUX_TIMEOUT_S",
    "LINUX_VCPUS",
    "SIM_CALLS",
    "SIM_MAPPING",
    "SIM_SEED",
    "SIM_VCPUS",
    "SIM_WORKLOAD",
]

#: The VP-index map strategy a Partition uses unless told otherwise.
DEFAULT_STRATEGY: Final = "adaptive"

#: ``vpindex run --backend sim``: vCPUs, how their VP indexes are laid out, the calls issued.
SIM_VCPUS: Final = 8
SIM_MAPPING: Final = "shuffled"
SIM_WORKLOAD: Final = "mixed"
SIM_CALLS: Final = 2000
SIM_SEED: Final = 0

#: The KVM suite (``run_suite``): vCPUs, scenario, iterations per case, seconds before "hung".
KVM_SUITE_VCPUS: Final = 3
KVM_SUITE_SCENARIO: Final = "all"
KVM_SUITE_ITERATIONS: Final = 100
KVM_SUITE_TIMEOUT_S: Final = 120.0

#: A bring-your-own guest (``run_guest``): vCPUs, RAM, seconds before "hung".
KVM_GUEST_VCPUS: Final = 1
KVM_GUEST_MEMORY_MIB: Final = 16
KVM_GUEST_TIMEOUT_S: Final = 30.0

#: The scale case (``run_scale``): vCPUs, calls per sender, seconds before "hung".
KVM_SCALE_VCPUS: Final = 128
KVM_SCALE_CALLS: Final = 20
KVM_SCALE_TIMEOUT_S: Final = 300.0

#: ``vpindex linux run``: vCPUs, guest RAM (enough for the small kernel and its initramfs; less
#: RAM boots faster under emulation), seconds before the run is declared hung.
LINUX_VCPUS: Final = 4
LINUX_MEMORY_MIB: Final = 64
LINUX_TIMEOUT_S: Final = 300.0
#: ``vpindex linux run --stock`` (Debian's cloud kernel): its image alone reaches 66 MiB of
#: physical memory, and with every instruction of its much larger boot emulated it takes many
#: minutes to reach /init on a software-virtualising host (the development host's 4-vCPU boot:
#: 2,260 s to its end, alone on the host).
LINUX_STOCK_MEMORY_MIB: Final = 128
LINUX_STOCK_TIMEOUT_S: Final = 3600.0

#: The KVM backend's remote-flush protocols (what a PV flush waits for before it returns; see
#: ``vpindex.backends.kvm.remote_flush``). With no choice, ``fence`` is used where the host
#: has membarrier(2) and ``confirm`` elsewhere.
FLUSH_FENCE: Final = "fence"
FLUSH_CONFIRM: Final = "confirm"
FLUSH_PROTOCOLS: Final = (FLUSH_FENCE, FLUSH_CONFIRM)
