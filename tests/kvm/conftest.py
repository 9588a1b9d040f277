"""KVM tests run only where /dev/kvm is usable; elsewhere each is skipped with the reason."""

from __future__ import annotations

import pytest

from vpindex.backends.kvm import unusable_reason

_REASON = unusable_reason()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/kvm/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.kvm)
            if _REASON is not None:
                item.add_marker(pytest.mark.skip(reason=f"KVM unusable: {_REASON}"))
