"""Booting an unmodified Linux kernel on the KVM backend (``vpindex linux run``).

``elf`` reads the vmlinux, ``bootparams``/``mptable`` write what the kernel reads at boot,
``cpuid`` builds its CPUID, ``devices`` are the few ports it uses, ``pagewalk`` reads its memory
by virtual address, ``milestones`` times its console, ``profile`` samples where its vCPUs are
(``--profile-ms``), and ``vmm`` runs it on a
:class:`~vpindex.backends.kvm.machine.Machine` (host defects: ``backends.kvm.host_fixes``).
"""
