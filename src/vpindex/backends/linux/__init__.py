"""The Linux guest: a small kernel built from an unmodified source tree, the project's own
``/init``, and the contract between that ``/init`` and the VMM that boots it.

- :mod:`.build`: :func:`~.build.build_kernel` builds (or takes from the cache) ``vmlinux`` and
  the initramfs; ``kernel.config`` is the config fragment, ``init.c`` the ``/init`` source.
- :mod:`.workload`: the kernel command-line knobs for ``/init`` and the parser of its report.
- :mod:`.cmdline`: the base kernel command line (console, boot, and this host's PVM words).
- :mod:`.kconfig`, :mod:`.cpio`: config fragments and the newc archive writer.

Standard library only; the compiler, ``make`` and ``tar`` are run as programs.
"""
