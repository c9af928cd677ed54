"""Real-dataplane fixtures: throwaway network namespaces (root, ``ip``, ``nft``), always deleted."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from eipflow.agent.lab import Lab, missing_requirements

WHY_NOT = missing_requirements()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if WHY_NOT is None:
        return
    skip = pytest.mark.skip(reason=f"real-dataplane test {WHY_NOT}")
    for item in items:
        if "netns" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def lab() -> Iterator[Lab]:
    """A lab whose namespaces and processes are gone after the test, pass or fail."""
    with Lab() as built:
        yield built
