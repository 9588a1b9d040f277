"""vpindex: Hyper-V VP-index translation and the PV TLB-flush / PV IPI hypercalls.

Layers, each importing only those before it: ``abi`` (wire formats) -> ``vpmap`` (VP index ->
vCPU translation) -> ``engine`` (the hypercall engine on a Partition) -> ``backends`` (embedded
software partition, KVM) -> ``cli``.
"""

from vpindex.abi import *  # noqa: F403
from vpindex.abi import __all__ as _abi_all

__version__ = "0.1.0"
__all__ = [*_abi_all, "__version__"]
