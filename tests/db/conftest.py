"""tests/db fixtures: tests here call ``eipflow.cli.main``, which configures structlog to write to
the ``sys.stderr`` of that moment (pytest's capture, closed after the test). Restore the previous
configuration so later tests never log into a closed file."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import structlog


@pytest.fixture(autouse=True)
def _restore_structlog() -> Iterator[None]:
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)
