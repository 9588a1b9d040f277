"""What the decoder targets share: the one exception a decoder may raise on guest input, and
the round-trip contracts of the hypercall input blocks (:mod:`vpindex.abi.inputs`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar, Protocol, Self, TypeVar

from vpindex.abi import HvError, HvStatus

T = TypeVar("T")


def decode_or_status(decode: Callable[[], T]) -> T | None:
    """Run ``decode``; None if it rejected the input with HvError(INVALID_HYPERCALL_INPUT).
    Any other exception, or an HvError with another status, propagates (a finding)."""
    try:
        return decode()
    except HvError as err:
        if err.status != HvStatus.INVALID_HYPERCALL_INPUT:
            raise AssertionError(f"decoder returned status {err.status!r}") from err
        return None


class _Input(Protocol):
    """An abi input block: ``decode`` a buffer, ``encode`` it back."""

    @classmethod
    def decode(cls, buf: bytes) -> Self: ...

    def encode(self) -> bytes: ...


class _FixedInput(_Input, Protocol):
    SIZE: ClassVar[int]


class _ExInput(_Input, Protocol):
    HEAD_SIZE: ClassVar[int]


F = TypeVar("F", bound=_FixedInput)
E = TypeVar("E", bound=_ExInput)


def decode_fixed(cls: type[F], data: bytes) -> F | None:
    """``cls.decode(data)`` for a fixed-size input ``cls`` (HV_TLB_FLUSH, HV_SEND_IPI): rejected
    exactly when ``data`` is shorter than ``cls.SIZE`` (then None); a decoded input re-encodes
    to the first ``cls.SIZE`` bytes of ``data``."""
    got = decode_or_status(lambda: cls.decode(data))
    if got is None:
        assert len(data) < cls.SIZE
        return None
    assert got.encode() == data[: cls.SIZE]
    return got


def decode_ex(cls: type[E], data: bytes) -> E | None:
    """``cls.decode(data)`` for an Ex input ``cls`` (a header and an HV_VP_SET): None if rejected;
    a decoded input had at least the header and the set's 16-byte head, and re-encodes to a
    canonical form that decodes to the same value."""
    got = decode_or_status(lambda: cls.decode(data))
    if got is None:
        return None
    assert len(data) >= cls.HEAD_SIZE + 16
    again = cls.decode(got.encode())
    assert again == got, (again, got)
    return got
