"""Every transition and backend call is logged with bound context (single-threaded: capture_logs)."""

from __future__ import annotations

from structlog.testing import capture_logs

from eipflow import Eipflow, InMemoryDataplane


def test_attach_logs_transitions_and_backend_calls(sqlite_url: str) -> None:
    backend = InMemoryDataplane()
    with Eipflow.open(sqlite_url, backend, owner="t") as flow:
        eip = flow.create_eip("203.0.113.10")
        with capture_logs() as logs:
            flow.attach(eip.uuid, nic="nic-1", guest_ip="10.0.0.5", vm="vm-1", host="h1")
    transitions = [e for e in logs if e["event"] == "transition.applied"]
    assert [(e["trigger"], e["state_from"], e["state_to"], e["version"]) for e in transitions] == [
        ("attach", "detached", "binding", 2), ("proceed", "binding", "applying", 3),
        ("apply_ok", "applying", "attached", 4)]
    for e in transitions:
        assert e["eip_uuid"] == eip.uuid and e["duration_ms"] >= 0 and e["actor"] == "t"
    [call] = [e for e in logs if e["event"] == "backend.apply_ok"]
    assert (call["eip_uuid"], call["host_uuid"], call["action"]) == (eip.uuid, "h1", "apply")
    assert call["duration_ms"] >= 0


def test_backend_failures_are_logged_as_warnings(sqlite_url: str) -> None:
    backend = InMemoryDataplane()
    backend.faults.fail("apply", timeout=True)
    with Eipflow.open(sqlite_url, backend) as flow:
        eip = flow.create_eip("203.0.113.10")
        with capture_logs() as logs:
            try:
                flow.attach(eip.uuid, nic="nic-1", guest_ip="10.0.0.5", vm="vm-1", host="h1")
            except Exception:  # noqa: BLE001 - AttachFailed, asserted through the logs
                pass
    [failed] = [e for e in logs if e["event"] == "backend.apply_failed"]
    assert failed["log_level"] == "warning" and failed["outcome_unknown"] is True and failed["retryable"] is True
