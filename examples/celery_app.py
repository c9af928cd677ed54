"""eipflow's steps as Celery tasks on a Redis broker.

Start a worker (the database and backend come from the environment; every worker process opens
its own connection)::

    export EIPFLOW_DB=sqlite:////tmp/eipflow.db
    cd examples && celery -A celery_app worker --loglevel=info --concurrency=2

Submit an attach from anywhere that can reach Redis (here, this file's ``main``)::

    python examples/celery_app.py --vip 203.0.113.10 --vm vm-1 --host h1

or from your own code::

    from celery_app import tasks
    eip = tasks.create_eip.delay("203.0.113.10", op_id="alloc-42").get(timeout=30)
    tasks.attach.delay(eip["uuid"], nic="nic-1", guest_ip="10.0.0.5", vm="vm-1", host="h1",
                       op_id="attach-42").get(timeout=60)

Settings (environment): ``EIPFLOW_CELERY_BROKER`` (default ``redis://127.0.0.1:6379/0``, also the
result backend), ``EIPFLOW_CELERY_QUEUE`` (default ``eipflow``), ``EIPFLOW_CELERY_VISIBILITY_TIMEOUT``
(seconds before Redis redelivers a message whose worker died without acking it; default 3600 — keep
it longer than your longest attach, or a slow one is delivered twice, which the operation id makes
harmless but wasteful).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import uuid

from celery import Celery

from eipflow.integrations.celery import register

BROKER = os.environ.get("EIPFLOW_CELERY_BROKER", "redis://127.0.0.1:6379/0")
QUEUE = os.environ.get("EIPFLOW_CELERY_QUEUE", "eipflow")
VISIBILITY_TIMEOUT = float(os.environ.get("EIPFLOW_CELERY_VISIBILITY_TIMEOUT", 3600))

app = Celery("eipflow_example", broker=BROKER, backend=BROKER)
app.conf.update(
    task_default_queue=QUEUE,
    task_acks_late=True,  # the tasks set it too; here it also covers tasks you add yourself
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,  # a worker holds only what it runs: a killed one strands little
    broker_connection_retry_on_startup=True,
    broker_transport_options={
        "visibility_timeout": VISIBILITY_TIMEOUT,
        # Sweep for unacked messages of dead workers about three times per visibility timeout
        # (kombu's default sweep is every ~100 s, far slower than a short timeout).
        "unacked_restore_interval": int(min(10, max(1, VISIBILITY_TIMEOUT // 3))),
        "unacked_restore_throttle": 1,
    },
    result_expires=3600,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
)
tasks = register(app)


def main(argv: list[str] | None = None) -> int:
    """Allocate an EIP and attach it through the worker; print both results as JSON."""
    parser = argparse.ArgumentParser(description="submit an attach to a running eipflow Celery worker")
    parser.add_argument("--vip", default="203.0.113.10")
    parser.add_argument("--vm", default="vm-1")
    parser.add_argument("--host", default="h1")
    parser.add_argument("--nic", default="nic-1")
    parser.add_argument("--guest-ip", default="10.0.0.5")
    parser.add_argument("--request-id", default=None, help="idempotency key prefix (default: random)")
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args(argv)
    request = args.request_id or uuid.uuid4().hex[:12]
    eip = tasks.create_eip.delay(args.vip, op_id=f"{request}-create").get(timeout=args.timeout)
    attached = tasks.attach.delay(
        eip["uuid"], nic=args.nic, guest_ip=args.guest_ip, vm=args.vm, host=args.host, op_id=f"{request}-attach"
    ).get(timeout=args.timeout)
    print(json.dumps({"created": eip, "attached": attached}, indent=2))
    return 0 if attached["state"] in ("attached", "released") else 1


if __name__ == "__main__":
    sys.exit(main())
