"""An asyncio service that attaches many EIPs while VM events race with them, on one event loop.

The backend here is *async* (``async def apply``), as a real one calling a network agent with an
async HTTP client would be: :class:`eipflow.AsyncEipflow` bridges it, so its coroutines run on this
loop while the engine waits in worker threads. Every attach, VM stop, migration and detach is
started at once with :func:`asyncio.gather`; the engine sorts the races out (a VM stopped during
its attach ends ``released`` with no rule, a migrated one has its rule only on the new host, a
failed apply is rolled back). The run ends with the invariant check and exits non-zero if any
invariant is broken.

Run it::

    python examples/async_service.py --eips 40
    python examples/async_service.py --db sqlite:///service.db --json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import sys
import tempfile
from collections import Counter
from pathlib import Path

import structlog

from eipflow import AsyncEipflow, AttachFailed, AttachSuperseded, EipSpec, IllegalTransition, InMemoryDataplane
from eipflow.invariants import check

HOSTS = ("host-a", "host-b", "host-c")


class AsyncDataplane:
    """An async backend: each call awaits a little simulated network latency, then changes the rules.

    The rules live in an :class:`~eipflow.InMemoryDataplane` (which also records calls, watches for
    overlapping calls per EIP and takes injected faults), so the invariant checker can read them.
    """

    def __init__(self, latency_s: float = 0.005) -> None:
        self.rules_table = InMemoryDataplane()
        self.latency_s = latency_s
        self.faults = self.rules_table.faults
        self.overlaps = self.rules_table.overlaps

    async def apply(self, spec: EipSpec) -> None:
        await asyncio.sleep(self.latency_s)  # the agent's round trip; the loop serves others meanwhile
        self.rules_table.apply(spec)

    async def revoke(self, spec: EipSpec) -> None:
        await asyncio.sleep(self.latency_s)
        self.rules_table.revoke(spec)

    async def rules(self, host_uuid: str | None = None) -> list[EipSpec]:
        return self.rules_table.rules(host_uuid)


async def attach_one(flow: AsyncEipflow, eip_uuid: str, n: int) -> str:
    """One request of the service: attach EIP ``n`` to its VM, with a request-scoped operation id."""
    try:
        await flow.attach(
            eip_uuid, nic=f"nic-{n}", guest_ip=f"10.0.{n // 250}.{n % 250 + 2}", vm=f"vm-{n}",
            host=HOSTS[n % len(HOSTS)], op_id=f"attach-request-{n}",
        )
    except AttachFailed:
        return "attach_failed"
    except AttachSuperseded:
        return "attach_superseded"  # a racing detach won: the EIP ends detached, which is a legal outcome
    return "attach_ok"


async def vm_event(flow: AsyncEipflow, n: int, kind: str) -> str:
    """A VM lifecycle event from the compute service, racing with that VM's attach."""
    vm = f"vm-{n}"
    if kind == "stop":
        await flow.vm_stopped(vm, op_id=f"stop-{n}")
    elif kind == "migrate":
        await flow.vm_migrated(vm, HOSTS[(n + 1) % len(HOSTS)], op_id=f"migrate-{n}")
    elif kind == "detach":
        try:
            await flow.detach(_uuid_of[n], op_id=f"detach-{n}")
        except IllegalTransition:
            return "detach_refused"  # it was still (or again) detached: nothing to undo
    return kind


_uuid_of: dict[int, str] = {}


async def run(url: str, eips: int, seed: int) -> dict[str, object]:
    """Create ``eips`` EIPs, then attach them all while VM events race; return a summary."""
    rng = random.Random(seed)
    backend = AsyncDataplane()
    async with await AsyncEipflow.open(url, backend, owner="async-service", max_workers=8) as flow:
        created = await asyncio.gather(
            *(flow.create_eip(f"203.0.{113 + n // 250}.{n % 250 + 1}", f"eip-{n}", op_id=f"create-{n}")
              for n in range(eips))
        )
        _uuid_of.clear()
        _uuid_of.update(enumerate(e.uuid for e in created))
        # Every fifth attach fails at the backend: it must be rolled back to ``detached``.
        for n in range(0, eips, 5):
            backend.faults.fail("apply", times=1, eip_uuid=created[n].uuid)
        events = [(n, rng.choice(("stop", "migrate", "detach", "none"))) for n in range(eips)]
        jobs = [attach_one(flow, e.uuid, n) for n, e in enumerate(created)]
        jobs += [vm_event(flow, n, kind) for n, kind in events if kind != "none"]
        rng.shuffle(jobs)
        outcomes = Counter(await asyncio.gather(*jobs, return_exceptions=False))
        await flow.run_due()  # work handed on by a racing call (e.g. a revoke after a late stop)
        rows = await flow.list_eips()
        violations = await asyncio.to_thread(check, flow.sync.store, flow.backend)
        rules = await flow.dataplane()
    return {
        "eips": eips,
        "outcomes": dict(sorted(outcomes.items())),
        "states": dict(sorted(Counter(e.state for e in rows).items())),
        "rules": len(rules),
        "violations": [str(v) for v in violations],
    }


def main(argv: list[str] | None = None) -> int:
    """Run the service once; exit status 1 when an invariant is broken."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", help="SQLAlchemy URL (default: a fresh SQLite file in a temporary directory)")
    parser.add_argument("--eips", type=int, default=30)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args(argv)
    if not structlog.is_configured():
        # An application configures logging, the library never does: warnings only, on stderr.
        structlog.configure(
            wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
            logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        )
    with tempfile.TemporaryDirectory() as tmp:
        url = args.db or f"sqlite:///{Path(tmp) / 'async_service.db'}"
        summary = asyncio.run(run(url, args.eips, args.seed))
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"{summary['eips']} EIPs; requests: {summary['outcomes']}")
        print(f"final states: {summary['states']}; dataplane rules: {summary['rules']}")
        violations = summary["violations"]
        assert isinstance(violations, list)
        print("invariants: ok" if not violations else "invariants BROKEN:\n  " + "\n  ".join(violations))
    return 1 if summary["violations"] else 0


if __name__ == "__main__":
    sys.exit(main())
