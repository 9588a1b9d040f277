"""Backends that host a Partition: the embedded software partition and a real KVM VMM."""
