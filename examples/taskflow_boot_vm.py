"""Boot a VM with OpenStack TaskFlow, with eipflow as two of its tasks; the last task fails.

The flow is linear: allocate an EIP → boot the VM → attach the EIP → configure DNS. DNS fails, so
TaskFlow reverts every task in reverse order: the attach is undone through eipflow (rule revoked,
binding cleared: the EIP goes ``attached → detaching → detached``), the VM is destroyed (eipflow
hears the VM stop), and the allocation is released (the EIP is deleted; its history stays).

It prints the flow's history (what TaskFlow did with each task) and the EIP's history (what eipflow
did with the row), then checks the invariants; exit status 0 when everything was reverted cleanly.

Run it::

    python examples/taskflow_boot_vm.py
    python examples/taskflow_boot_vm.py --db sqlite:///boot.db --dns-ok     # the happy path
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import structlog

from eipflow import Eipflow, SimulatedDataplane
from eipflow.invariants import check

with warnings.catch_warnings():
    # oslo.utils, a TaskFlow dependency, warns on import that one of its own modules is deprecated.
    warnings.filterwarnings("ignore", "eventletutils module is deprecated", DeprecationWarning)
    from taskflow import engines, task
    from taskflow.patterns import linear_flow

    from eipflow.integrations.taskflow import AttachEip, CreateEip


class BootVm(task.Task):  # type: ignore[misc]
    """Stands in for the compute service: 'boots' the VM and tells eipflow where it runs."""

    default_provides = ("vm", "host", "nic", "guest_ip")

    def __init__(self, flow: Eipflow, name: str = "boot-vm") -> None:
        super().__init__(name=name)
        self.flow = flow

    def execute(self, operation_id: str) -> tuple[str, str, str, str]:
        vm = f"vm-{operation_id}"
        self.flow.vm_started(vm, "compute-1", op_id=f"{operation_id}/{self.name}/start")
        return vm, "compute-1", f"nic-{operation_id}", "10.0.0.5"

    def revert(self, operation_id: str, result: Any, **kwargs: Any) -> None:
        if isinstance(result, tuple):
            # Destroying the VM: eipflow must hear it, like every release path of the platform.
            self.flow.vm_stopped(result[0], op_id=f"{operation_id}/{self.name}/destroy")


class ConfigureDns(task.Task):  # type: ignore[misc]
    """Publishes the EIP's name; fails unless ``--dns-ok``."""

    def __init__(self, fail: bool, name: str = "configure-dns") -> None:
        super().__init__(name=name)
        self.fail = fail

    def execute(self, eip: dict[str, Any]) -> None:
        if self.fail:
            raise RuntimeError(f"DNS API unavailable: cannot publish {eip['vip']}")


def build(flow: Eipflow, *, dns_ok: bool) -> linear_flow.Flow:
    """The boot flow; eipflow's tasks are CreateEip and AttachEip."""
    return linear_flow.Flow("boot-vm-with-eip").add(
        CreateEip(flow, name="allocate-eip"),
        BootVm(flow),
        AttachEip(flow, name="attach-eip"),
        ConfigureDns(fail=not dns_ok),
    )


def run(url: str, *, dns_ok: bool, operation_id: str = "req-7") -> dict[str, Any]:
    """Run the flow once; return the flow's and the EIP's history, the outcome and the violations."""
    backend = SimulatedDataplane()
    with Eipflow.open(url, backend, owner="taskflow-example") as flow:
        engine = engines.load(build(flow, dns_ok=dns_ok), store={"operation_id": operation_id,
                                                               "vip": "203.0.113.10"})
        flow_history: list[str] = []
        results: dict[str, Any] = {}

        def on_task(state: str, details: dict[str, Any]) -> None:
            flow_history.append(f"  {details.get('task_name')}: {state}")
            if state == "SUCCESS":
                results[details["task_name"]] = details.get("result")

        engine.notifier.register("*", lambda state, details: flow_history.append(f"flow {state}"))
        engine.atom_notifier.register("*", on_task)
        error: str | None = None
        try:
            engine.run()
        except Exception as exc:  # noqa: BLE001 - the flow's failure is the example's subject
            error = f"{type(exc).__name__}: {exc}"
        eip_uuid = results["allocate-eip"]  # a reverted task's result is no longer in the engine's storage
        eip_history = [
            f"v{r.version} {r.from_state or '-'} --{r.event}--> {r.to_state}"
            + (f"   [op {r.op_id}]" if r.op_id else "")
            for r in flow.history(eip_uuid)
        ]
        rows = flow.list_eips()
        return {
            "error": error,
            "flow_history": flow_history,
            "eip_uuid": eip_uuid,
            "eip_history": eip_history,
            "eip_state": next((e.state for e in rows if e.uuid == eip_uuid), "deleted"),
            "rules": [f"{r.host_uuid}: {r.vip} -> {r.guest_ip}" for r in flow.dataplane()],
            "violations": [str(v) for v in check(flow.store, backend)],
        }


def main(argv: list[str] | None = None) -> int:
    """Run the flow and print both histories; non-zero unless the outcome is the expected one."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", help="SQLAlchemy URL (default: a fresh SQLite file in a temporary directory)")
    parser.add_argument("--dns-ok", action="store_true", help="let DNS succeed (nothing is reverted)")
    args = parser.parse_args(argv)
    if not structlog.is_configured():
        # An application configures logging, the library never does: warnings only, on stderr.
        structlog.configure(
            wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
            logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        )
    with tempfile.TemporaryDirectory() as tmp:
        out = run(args.db or f"sqlite:///{Path(tmp) / 'taskflow.db'}", dns_ok=args.dns_ok)
    print("flow history:")
    print("\n".join(out["flow_history"]))
    print(f"flow error: {out['error']}")
    print(f"\nEIP {out['eip_uuid']} history:")
    print("\n".join(f"  {line}" for line in out["eip_history"]))
    print(f"\nEIP now: {out['eip_state']}; dataplane: {out['rules'] or 'no rules'}")
    print("invariants: ok" if not out["violations"] else "invariants BROKEN:\n  " + "\n  ".join(out["violations"]))
    if args.dns_ok:
        ok = (out["eip_state"], len(out["rules"])) == ("attached", 1)
    else:  # attached first, then reverted: detached by the attach's revert, deleted by the allocation's
        undone = [line.split(" ", 1)[1].split("   [")[0] for line in out["eip_history"]][-4:]
        ok = undone == ["applying --apply_ok--> attached", "attached --detach--> detaching",
                        "detaching --revoke_ok--> detached", "detached --delete--> deleted"] and not out["rules"]
    ok = ok and not out["violations"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
