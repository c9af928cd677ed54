"""examples/netns_demo.py runs end to end and leaves no namespace behind."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.netns, pytest.mark.slow]

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "netns_demo.py"


def namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def test_netns_demo(capsys: pytest.CaptureFixture[str]) -> None:
    """Traffic reaches the guest with the client's address, leaves as the VIP, follows the migration."""
    spec = importlib.util.spec_from_file_location("examples_netns_demo", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    before = namespaces()
    try:
        assert module.main([]) == 0
    finally:
        import logging

        import structlog  # the demo configures structlog; give the session its quiet default back

        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
                            logger_factory=structlog.PrintLoggerFactory())
    out = capsys.readouterr().out
    assert "< hello from guest; you are 203.0.113.1" in out
    assert "< hello from outside; you are 203.0.113.100" in out
    assert "VM migrated -> attached on host-2" in out
    assert out.rstrip().endswith("namespaces deleted; demo OK")
    assert namespaces() == before
