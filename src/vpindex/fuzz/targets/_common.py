"""What the decoder targets share: the one exception a decoder may raise on guest input."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

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
