"""The kernel config fragment: its syntax, what it asks for, merging and the applied check."""

from __future__ import annotations

import pytest

from vpindex.backends.linux import kconfig

FRAGMENT = kconfig.load_fragment().as_dict()


def test_the_shipped_fragment_asks_for_the_guest_the_project_needs() -> None:
    wanted_on = [
        "SMP", "HYPERVISOR_GUEST", "HYPERV", "X86_LOCAL_APIC", "X86_MPPARSE", "BLK_DEV_INITRD",
        "SERIAL_8250", "SERIAL_8250_CONSOLE", "PROC_FS", "DEVTMPFS", "X86_MSR", "FUTEX",
        "CRYPTO", "MEMBARRIER", "BINFMT_ELF",
    ]  # fmt: skip
    for name in wanted_on:
        assert FRAGMENT.get(name) == "y", name
    for name in ["ACPI", "PCI", "SYSFS", "LEGACY_PTYS", "MODULES", "KVM_GUEST", "XEN"]:
        assert name in FRAGMENT and FRAGMENT[name] is None, name
    compressors = [n for n in FRAGMENT if n.startswith("RD_")]
    assert len(compressors) == 7 and all(FRAGMENT[n] is None for n in compressors)
    assert int(FRAGMENT["NR_CPUS"] or 0) >= 8


def test_lines_parse_into_set_and_unset_options_and_comments_are_ignored() -> None:
    frag = kconfig.parse_fragment(
        '# a comment\n\nCONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=16\nCONFIG_D="text"\n'
    )
    assert frag.options == (("A", "y"), ("B", None), ("C", "16"), ("D", '"text"'))


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("CONFIG_A=y\nCONFIG_A=n\n", "already given"),
        ("CONFIG_A=y\nA=y\n", "line 2"),
        ("CONFIG_A=\n", "empty value"),
        ("CONFIG_A=y\n# CONFIG_A is not set\n", "already given"),
    ],
)
def test_malformed_fragments_are_refused_naming_the_line(text: str, needle: str) -> None:
    with pytest.raises(kconfig.FragmentError, match=needle):
        kconfig.parse_fragment(text)


def test_the_digest_ignores_comments_and_follows_values() -> None:
    base = kconfig.parse_fragment("CONFIG_A=y\n# CONFIG_B is not set\n")
    commented = kconfig.parse_fragment("# why A\nCONFIG_A=y\n\n# CONFIG_B is not set\n")
    changed = kconfig.parse_fragment("CONFIG_A=y\nCONFIG_B=y\n")
    assert base.digest() == commented.digest()
    assert base.digest() != changed.digest()


def test_merge_replaces_every_line_about_a_fragment_option() -> None:
    frag = kconfig.parse_fragment("CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_N=16\n")
    dotconfig = "CONFIG_X=y\n# CONFIG_A is not set\nCONFIG_B=y\nCONFIG_N=8\n"
    merged = kconfig.parse_dotconfig(kconfig.merge(dotconfig, frag))
    assert merged == {"X": "y", "A": "y", "B": None, "N": "16"}


def test_unapplied_names_each_option_the_final_config_does_not_hold() -> None:
    frag = kconfig.parse_fragment("CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_N=16\n")
    assert kconfig.unapplied("CONFIG_A=y\nCONFIG_N=16\n", frag) == []
    assert kconfig.unapplied("CONFIG_A=y\nCONFIG_B=n\nCONFIG_N=16\n", frag) == []
    wrong = kconfig.unapplied("# CONFIG_A is not set\nCONFIG_B=y\nCONFIG_N=8\n", frag)
    assert [str(m) for m in wrong] == [
        "CONFIG_A: wanted y, got not set",
        "CONFIG_B: wanted not set, got y",
        "CONFIG_N: wanted 16, got 8",
    ]
