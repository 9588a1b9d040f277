"""Guest programs, assembled at import-free build time with :mod:`vpindex.backends.kvm.asm`."""
