"""A machine's exit table is its own: a port added before ``run`` is served by the same loop,
and a port the table does not name stops the machine with a GuestError."""

from __future__ import annotations

import pytest

from vpindex.backends.kvm import GuestError
from vpindex.backends.kvm.contract import CONSOLE_PORT
from vpindex.backends.kvm.exits import VcpuThread
from vpindex.backends.kvm.guests import hello
from vpindex.backends.kvm.layout import GUEST_LOAD_ADDRESS
from vpindex.backends.kvm.machine import Machine
from vpindex.backends.kvm.vcpu import IoExit

_MEMORY = 16 << 20


@pytest.mark.timeout(60)
def test_a_port_added_to_the_table_is_served() -> None:
    seen: list[tuple[int, bytes]] = []

    def capture(cpu: VcpuThread, io: IoExit) -> bool:
        seen.append((cpu.index, io.data))
        return False

    with Machine(vcpus=2, memory_size=_MEMORY) as m:
        m.load(GUEST_LOAD_ADDRESS, hello.build())
        m.exits.out_ports[CONSOLE_PORT] = capture
        m.run(timeout=20)
        assert [t.exit_code for t in m.threads] == [0, 0]
        assert all(t.console == b"" for t in m.threads)  # the contract's handler was replaced
    for index, letter in ((0, "A"), (1, "B")):
        text = b"".join(data for i, data in seen if i == index)
        assert text == f"{letter}Microsoft Hv".encode()


@pytest.mark.timeout(60)
def test_a_port_removed_from_the_table_stops_the_machine() -> None:
    with Machine(vcpus=1, memory_size=_MEMORY) as m:
        m.load(GUEST_LOAD_ADDRESS, hello.build())
        del m.exits.out_ports[CONSOLE_PORT]
        with pytest.raises(GuestError, match=r"unhandled OUT port 0xe9"):
            m.run(timeout=20)
