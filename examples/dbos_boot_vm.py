"""Boot a VM with DBOS Transact, with eipflow's operations as durable steps; DNS fails the first time.

The workflow is allocate an EIP → boot the VM (simulated) → tell eipflow where it runs → attach the
EIP → publish DNS. The DNS step fails on its first attempt; DBOS retries it and the workflow
completes. Every step is checkpointed in DBOS's system tables, which live in the same database as
eipflow's (schema ``dbos`` on PostgreSQL, the same file on SQLite).

It prints the workflow's steps (what DBOS recorded) and the EIP's history (what eipflow did with the
row; the attach carries the operation id ``dbos:<workflow id>/<step id>``), then checks the invariants.
Exit status 0 when the workflow succeeded and every invariant holds.

Run it::

    python examples/dbos_boot_vm.py
    python examples/dbos_boot_vm.py --db postgresql+psycopg://postgres@127.0.0.1:5432/cloud

Kill it mid-way and let DBOS recover the workflow in a new process (what the tests do, with the
simulated dataplane kept in the database so both processes see the same rules)::

    python examples/dbos_boot_vm.py --db sqlite:///boot.db --workflow-id boot-1 &
    kill -9 %1
    python examples/dbos_boot_vm.py --db sqlite:///boot.db --workflow-id boot-1 --recover
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog
from dbos import DBOS, SetWorkflowID
from dbos import error as dbos_error

from eipflow import Eipflow
from eipflow.integrations.dbos import EipflowSteps, shared_config
from eipflow.invariants import check

APP = "eipflow-boot-vm"
VERSION = "1"  # pinned, so a restarted process (any checkout of this file) recovers the same workflows


class DnsUnavailable(Exception):
    """The DNS API refused the record (the first attempt always does, here)."""


def build(eips: EipflowSteps) -> Callable[[str, str], dict[str, Any]]:
    """Register the workflow and its own steps with DBOS (before ``DBOS.launch()``); return the workflow."""

    @DBOS.step(name="boot_vm")
    def boot_vm(request_id: str) -> dict[str, str]:
        """Stands in for the compute service: the VM boots on compute-1 with one NIC."""
        return {"vm": f"vm-{request_id}", "host": "compute-1", "nic": f"nic-{request_id}", "guest_ip": "10.0.0.5"}

    @DBOS.step(name="publish_dns", retries_allowed=True, interval_seconds=0.05, max_attempts=3)
    def publish_dns(name: str, vip: str) -> dict[str, Any]:
        """Publishes ``name -> vip``; the first attempt fails, DBOS retries the step."""
        status = DBOS.step_status
        attempt = status.current_attempt if status and status.current_attempt is not None else 0
        if attempt == 0:
            raise DnsUnavailable(f"DNS API unavailable: cannot publish {name} -> {vip}")
        return {"record": f"{name}.example.net", "vip": vip, "attempts": attempt + 1}

    @DBOS.workflow(name="boot_vm_with_eip")
    def boot_vm_with_eip(request_id: str, vip: str) -> dict[str, Any]:
        eip = eips.create_eip(vip, name=f"web-{request_id}")
        vm = boot_vm(request_id)
        eips.vm_started(vm["vm"], vm["host"])
        attached = eips.attach(eip.uuid, nic=vm["nic"], guest_ip=vm["guest_ip"], vm=vm["vm"], host=vm["host"])
        dns = publish_dns(f"web-{request_id}", attached.vip)
        return {"eip_uuid": eip.uuid, "state": attached.state, "applied_host": attached.applied_host, "dns": dns}

    return boot_vm_with_eip


def _summary(value: Any) -> str:
    if isinstance(value, dict) and "uuid" in value and "state" in value:
        return f"EIP {value['state']}"
    if isinstance(value, list) and all(isinstance(v, dict) and "state" in v for v in value):
        return f"{len(value)} EIP(s)"
    return json.dumps(value, default=str)


def run(url: str, *, system_url: str | None = None, schema: str = "dbos", workflow_id: str = "boot-vm-1",
        request_id: str = "7", vip: str = "203.0.113.10", recover: bool = False) -> dict[str, Any]:
    """Run (or, with ``recover``, recover) the workflow; return its steps, the EIP's history and the checks."""
    with Eipflow.open(url, owner=f"dbos-example:{workflow_id}") as flow:
        DBOS(config=shared_config(system_url or url, name=APP, schema=schema, application_version=VERSION,
                                  log_level="WARNING"))
        try:
            workflow = build(EipflowSteps(flow))
            DBOS.launch()  # recovers this executor's pending workflows (a dead process's) in the background
            error: str | None = None
            result: dict[str, Any] | None = None
            try:
                if recover:
                    result = DBOS.retrieve_workflow(workflow_id).get_result()
                else:
                    with SetWorkflowID(workflow_id):
                        result = workflow(request_id, vip)
            except dbos_error.DBOSAwaitedWorkflowCancelledError as exc:
                error = f"{type(exc).__name__}: {exc}"
            status = DBOS.get_workflow_status(workflow_id)
            steps = [
                {"id": s["function_id"], "name": s["function_name"],
                 "output": _summary(s["output"]) if s["error"] is None else None,
                 "error": f"{type(s['error']).__name__}: {s['error']}" if s["error"] is not None else None}
                for s in DBOS.list_workflow_steps(workflow_id)
            ]
        finally:
            DBOS.destroy(destroy_registry=True)
        eips = flow.list_eips()
        eip_uuid = result["eip_uuid"] if result else (eips[0].uuid if eips else None)
        history = flow.history(eip_uuid) if eip_uuid else []
        return {
            "workflow_id": workflow_id,
            "status": status.status if status else None,
            "error": error,
            "result": result,
            "steps": steps,
            "eip_uuid": eip_uuid,
            "eip_state": next((e.state for e in eips if e.uuid == eip_uuid), "deleted"),
            "eip_history": [
                f"v{r.version} {r.from_state or '-'} --{r.event}--> {r.to_state}"
                + (f"   [op {r.op_id}]" if r.op_id else "")
                for r in history
            ],
            "rules": [f"{r.host_uuid}: {r.vip} -> {r.guest_ip}" for r in flow.dataplane()],
            "violations": [str(v) for v in check(flow.store, flow.backend)],
        }


def main(argv: list[str] | None = None) -> int:
    """Run the workflow and print its steps and the EIP's history; non-zero unless it succeeded cleanly."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", help="eipflow's SQLAlchemy URL (default: a fresh SQLite file in a temporary directory)")
    parser.add_argument("--system-db", help="DBOS's system database (default: the same database as --db)")
    parser.add_argument("--schema", default="dbos", help="schema of DBOS's system tables (PostgreSQL)")
    parser.add_argument("--workflow-id", default="boot-vm-1", help="the DBOS workflow id (start or recover it)")
    parser.add_argument("--recover", action="store_true", help="start nothing: let DBOS recover the workflow")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    parser.add_argument("-v", "--verbose", action="store_true", help="log eipflow's steps and transitions")
    args = parser.parse_args(argv)
    if not structlog.is_configured() or args.verbose:
        # An application configures logging, the library never does: on stderr, JSON lines.
        structlog.configure(
            processors=[structlog.processors.add_log_level, structlog.processors.JSONRenderer()],
            wrapper_class=structlog.make_filtering_bound_logger(logging.INFO if args.verbose else logging.WARNING),
            logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        )
    with tempfile.TemporaryDirectory() as tmp:
        out = run(args.db or f"sqlite:///{Path(tmp) / 'boot.db'}", system_url=args.system_db, schema=args.schema,
                  workflow_id=args.workflow_id, recover=args.recover)
    ok = out["status"] == "SUCCESS" and not out["violations"]
    if args.json:
        print(json.dumps(out, indent=2))
        return 0 if ok else 1
    print(f"workflow {out['workflow_id']}: {out['status']}" + (f" ({out['error']})" if out["error"] else ""))
    for step in out["steps"]:
        print(f"  step {step['id']} {step['name']}: " + (step["output"] or f"raised {step['error']}"))
    print(f"\nEIP {out['eip_uuid']} history:")
    print("\n".join(f"  {line}" for line in out["eip_history"]))
    print(f"\nEIP now: {out['eip_state']}; dataplane: {out['rules'] or 'no rules'}")
    print("invariants: ok" if not out["violations"] else "invariants BROKEN:\n  " + "\n  ".join(out["violations"]))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
