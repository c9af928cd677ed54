"""The seed's race, replayed: an attach blocked in the backend while its VM stops.

Before the fix (ZStack ZSTAC-83309) the binding was written only after the
backend call, so the VM-stop path could not see the in-flight EIP and the NAT
rule leaked. eipflow persists the binding first; the stop is recorded on the row
at once and acted on when the blocked apply returns (fenced completion).
"""

from __future__ import annotations

import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

from .api import Eipflow
from .backends.simulated import SimulatedDataplane
from .errors import AttachFailed
from .values import Eip, EipSpec, TransitionRecord

__all__ = ["DemoResult", "run_demo"]


@dataclass
class DemoResult:
    db_url: str
    steps: list[str] = field(default_factory=list)
    eips: list[Eip] = field(default_factory=list)
    history: dict[str, list[TransitionRecord]] = field(default_factory=dict)
    rules: list[EipSpec] = field(default_factory=list)


def run_demo(db_url: str | None = None) -> DemoResult:
    """Run both acts on a fresh SQLite database (a temporary file, removed afterwards, unless ``db_url`` is given)."""
    if db_url is not None:
        return _run(db_url)
    with tempfile.TemporaryDirectory(prefix="eipflow-demo-") as tmp:
        return _run(f"sqlite:///{Path(tmp) / 'demo.db'}")


def _run(db_url: str) -> DemoResult:
    backend = SimulatedDataplane()
    result = DemoResult(db_url)
    say = result.steps.append
    with Eipflow.open(db_url, backend) as flow:
        # Act 1: the seed's race.
        eip = flow.create_eip("203.0.113.10", name="web")
        say(f"created EIP {eip.uuid} for VIP 203.0.113.10")
        gate = backend.faults.block("apply", eip_uuid=eip.uuid)
        outcome: dict[str, Eip | BaseException] = {}

        def attach() -> None:
            try:
                outcome["eip"] = flow.attach(eip.uuid, nic="nic-1", guest_ip="10.0.0.5", vm="vm-1", host="host-1")
            except BaseException as exc:  # noqa: BLE001 - reported below
                outcome["error"] = exc

        worker = threading.Thread(target=attach, name="attach")
        worker.start()
        gate.wait_entered()
        mid = flow.get_eip(eip.uuid)
        say(f"attach is blocked in backend.apply on host-1; the row already says {mid.state} "
            f"(binding nic-1/10.0.0.5 visible to release paths)")
        flow.vm_stopped("vm-1")
        say(f"VM vm-1 stopped: recorded at once on the row (still {flow.get_eip(eip.uuid).state}, desired host: none)")
        gate.release()
        worker.join()
        if "error" in outcome:
            raise outcome["error"]  # type: ignore[misc]
        final = outcome["eip"]
        assert isinstance(final, Eip)
        say(f"apply returned; fenced completion saw the stop, revoked the rule on host-1: EIP is {final.state}")

        # Act 2: a failed attach rolls back only its own binding.
        other = flow.create_eip("203.0.113.11", name="api")
        backend.faults.fail("apply", eip_uuid=other.uuid)
        try:
            flow.attach(other.uuid, nic="nic-2", guest_ip="10.0.0.6", vm="vm-2", host="host-2")
        except AttachFailed as exc:
            say(f"second attach failed in the backend and was rolled back: {exc.state}")
        result.eips = flow.list_eips()
        result.history = {e.uuid: flow.history(e.uuid) for e in result.eips}
        result.rules = flow.dataplane()
    return result
