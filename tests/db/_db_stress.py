"""The stress workload shared by the thread and process stress tests (and runnable as a worker process).

A few hot EIPs contended by everyone on two hot VMs whose guest IPs collide on purpose, plus cold
EIPs each owned by one worker. Expected refusals (conflicts, illegal transitions, guest IP in use)
are outcomes, counted; anything else is a failure.

As a script: ``python _db_stress.py URL WORKER SEED OPS`` prints ``ready``, waits for a line on
stdin (so all processes start together), runs, and prints one JSON line of outcome counts.
"""

from __future__ import annotations

import json
import logging
import random
import sys
from collections import Counter

from eipflow import Eipflow
from eipflow.backends.simulated import SimulatedDataplane
from eipflow.errors import AttachFailed, ConflictError, GuestIpInUse, IllegalTransition, VersionConflict

HOSTS = ["host-a", "host-b", "host-c"]
HOT_VMS = [(f"vm-hot-{k}", f"nic-hot-{k}", [f"10.1.{k}.1", f"10.1.{k}.2"]) for k in range(2)]
COLD_PER_WORKER = 4


def setup(flow: Eipflow, workers: int, hot: int = 3) -> tuple[list[str], dict[int, list[str]]]:
    """Create the hot EIPs and each worker's cold EIPs; returns their uuids."""
    hot_eips = [flow.create_eip(f"198.51.100.{i + 1}", name=f"hot-{i}").uuid for i in range(hot)]
    cold = {
        w: [flow.create_eip(f"203.0.{w}.{j + 1}", name=f"cold-{w}-{j}").uuid for j in range(COLD_PER_WORKER)]
        for w in range(workers)
    }
    return hot_eips, cold


def run_worker(flow: Eipflow, worker: int, seed: int, ops: int, hot: list[str], cold: list[str]) -> Counter[str]:
    """``ops`` random operations; returns a count per ``operation:outcome``."""
    rng = random.Random(seed)
    counts: Counter[str] = Counter()
    for _ in range(ops):
        if rng.random() < 0.6:
            eip = rng.choice(hot)
            vm, nic, ips = rng.choice(HOT_VMS)
            guest_ip = rng.choice(ips)
        else:
            j = rng.randrange(len(cold))
            eip, vm, nic = cold[j], f"vm-cold-{worker}-{j}", f"nic-cold-{worker}-{j}"
            guest_ip = f"10.2.{worker}.{j + 1}"
        host = rng.choice(HOSTS)
        op = rng.choices(["attach", "detach", "stop", "start", "migrate"], weights=[4, 2, 1, 1, 2])[0]
        wait = rng.random() > 0.15  # some intents only enqueue: their work is left for other workers and the drain
        try:
            if op == "attach":
                flow.attach(eip, nic=nic, guest_ip=guest_ip, vm=vm, host=host, wait=wait)
            elif op == "detach":
                flow.detach(eip, wait=wait)
            elif op == "stop":
                flow.vm_stopped(vm, wait=wait)
            elif op == "start":
                flow.vm_started(vm, host, wait=wait)
            else:
                flow.vm_migrated(vm, host, wait=wait)
            outcome = "ok"
        except GuestIpInUse:
            outcome = "guest_ip_in_use"
        except IllegalTransition:
            outcome = "illegal_transition"
        except VersionConflict:
            outcome = "version_conflict"
        except ConflictError as exc:  # e.g. AttachSuperseded: a later intent overtook this attach
            outcome = type(exc).__name__
        except AttachFailed:
            outcome = "attach_failed"  # no faults are injected: the test asserts there are none
        counts[f"{op}:{outcome}"] += 1
    counts["cas_lost"] += flow.runner.conflicts
    return counts


def drain(flow: Eipflow, rounds: int = 50) -> int:
    """Run due work until nothing is pending or running; returns how many items ran."""
    total = 0
    for _ in range(rounds):
        total += flow.run_due()
        if not flow.work_items(statuses=["pending", "running"]):
            return total
    left = flow.work_items(statuses=["pending", "running"])
    raise AssertionError(f"work did not drain: {left}")


def _main(argv: list[str]) -> int:
    import structlog

    from eipflow.store.database import transient_retries

    # Library logs would interleave with the JSON result on stdout: warnings only, to stderr.
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
    )
    url, worker, seed, ops = argv[0], int(argv[1]), int(argv[2]), int(argv[3])
    spec = json.loads(argv[4])
    flow = Eipflow.open(url, SimulatedDataplane(), owner=f"proc-{worker}")
    try:
        print("ready", flush=True)
        sys.stdin.readline()  # the parent releases every process at once
        counts = run_worker(flow, worker, seed, ops, spec["hot"], spec["cold"])
        counts["db_transient_retries"] += transient_retries()
        overlaps = len(flow.backend.overlaps) if isinstance(flow.backend, SimulatedDataplane) else 0
        counts["backend_overlaps"] += overlaps
    finally:
        flow.close()
    print(json.dumps(dict(counts)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
