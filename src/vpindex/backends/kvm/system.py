"""``Kvm``: the /dev/kvm system fd (API version, capabilities, supported CPUID, VM creation)."""

from __future__ import annotations

import ctypes
import errno
import os

from vpindex.backends.kvm._libc import ioctl, ioctl_raw
from vpindex.backends.kvm.errors import KvmError, KvmUnavailable
from vpindex.backends.kvm.ioctls import API_VERSION, Cap, Ioctl
from vpindex.backends.kvm.structs import CpuidEntry2, cpuid2_buffer

__all__ = ["DEVICE", "REQUIRED_CAPS", "Kvm"]

DEVICE = "/dev/kvm"

#: Capabilities the VMM cannot work without, with what each is for.
REQUIRED_CAPS: dict[Cap, str] = {
    Cap.IRQCHIP: "in-kernel LAPIC for interrupt delivery",
    Cap.SIGNAL_MSI: "KVM_SIGNAL_MSI to inject IPIs",
    Cap.IMMEDIATE_EXIT: "kicking vCPUs out of KVM_RUN",
    Cap.SYNC_REGS: "register access without extra ioctls",
    Cap.X86_USER_SPACE_MSR: "Hyper-V MSRs served in userspace",
    Cap.X86_MSR_FILTER: "routing the Hyper-V MSR range to userspace",
}


class Kvm:
    """The system fd. Opening checks the API version; :meth:`check_required` the capabilities."""

    def __init__(self, path: str = DEVICE) -> None:
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            raise KvmUnavailable(f"{path} does not exist (no KVM on this host)") from None
        except PermissionError:
            raise KvmUnavailable(
                f"no permission to open {path} (need rw access, e.g. group kvm)"
            ) from None
        except OSError as e:
            raise KvmUnavailable(f"cannot open {path}: {e.strerror}") from None
        try:
            version = ioctl(self.fd, Ioctl.GET_API_VERSION)
        except OSError as e:
            os.close(self.fd)
            raise KvmUnavailable(f"{path} is not a KVM device ({e.strerror})") from None
        if version != API_VERSION:
            os.close(self.fd)
            raise KvmUnavailable(f"{path}: KVM API version {version}, need {API_VERSION}")

    def close(self) -> None:
        """Close the system fd (VMs keep their own fds)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def check_extension(self, cap: Cap) -> int:
        """KVM_CHECK_EXTENSION: 0 when absent, else a cap-specific positive value."""
        return ioctl(self.fd, Ioctl.CHECK_EXTENSION, int(cap))

    def missing_caps(self) -> list[str]:
        """Human-readable list of the required capabilities this host lacks."""
        return [
            f"KVM_CAP_{cap.name} ({why})"
            for cap, why in REQUIRED_CAPS.items()
            if self.check_extension(cap) <= 0
        ]

    def check_required(self) -> None:
        """Raise KvmError naming every missing required capability."""
        missing = self.missing_caps()
        if missing:
            raise KvmUnavailable("/dev/kvm lacks " + ", ".join(missing))

    def vcpu_mmap_size(self) -> int:
        """KVM_GET_VCPU_MMAP_SIZE: bytes to mmap from each vCPU fd (kvm_run + pio page...)."""
        return ioctl(self.fd, Ioctl.GET_VCPU_MMAP_SIZE)

    def max_vcpus(self) -> int:
        """KVM_CAP_MAX_VCPUS (0 means the kernel did not say)."""
        return self.check_extension(Cap.MAX_VCPUS)

    def supported_cpuid(self) -> list[CpuidEntry2]:
        """KVM_GET_SUPPORTED_CPUID, growing the buffer while the kernel answers E2BIG."""
        nent = 128
        while True:
            buf = cpuid2_buffer(nent)()
            buf.nent = nent
            r, err = ioctl_raw(self.fd, Ioctl.GET_SUPPORTED_CPUID, ctypes.addressof(buf))
            if r >= 0:
                n = buf.nent
                entries = buf.entries
                return [CpuidEntry2.from_buffer_copy(entries[i]) for i in range(n)]
            if err != errno.E2BIG or nent >= 4096:
                raise KvmError(f"KVM_GET_SUPPORTED_CPUID failed: {os.strerror(err)}")
            nent *= 2

    def create_vm_fd(self) -> int:
        """KVM_CREATE_VM (default machine type); the caller owns the returned fd."""
        return ioctl(self.fd, Ioctl.CREATE_VM, 0)
