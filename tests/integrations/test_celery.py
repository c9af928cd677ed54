"""Celery tasks through a real worker process and the real Redis broker, on a shared SQLite file.

The worker runs ``examples/celery_app.py`` with the database-backed simulated dataplane; this test
process talks to the same SQLite file to set up and to assert rows, history and rules. Races are
forced with the cross-process gate (``EIPFLOW_SIM_GATE``); waiting for the worker is bounded polling
of its files and results, never a sleep standing in for synchronisation.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest

from eipflow import Eipflow, SimulatedDataplane
from eipflow.invariants import check

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
REDIS_ENV = "EIPFLOW_TEST_REDIS_URL"
DEADLINE_S = 60.0
BINDING = {"nic": "nic-1", "guest_ip": "10.0.0.5", "vm": "vm-1", "host": "h1"}


def redis_url() -> str:
    url = os.environ.get(REDIS_ENV)
    if not url:
        pytest.skip(f"Celery tests need a Redis broker in {REDIS_ENV} (e.g. redis://127.0.0.1:6379/0)")
    import redis

    try:
        redis.Redis.from_url(url).ping()
    except redis.RedisError as exc:
        pytest.fail(f"{REDIS_ENV}={url} is set but Redis does not answer: {exc}")
    return url


def wait_for(what: str, ready: Callable[[], bool], timeout: float = DEADLINE_S) -> None:
    """Poll a condition on another process with a bounded deadline."""
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.05)  # polling another process's progress, not waiting out a race


class Worker:
    """A ``celery worker`` subprocess running examples/celery_app.py."""

    def __init__(self, env: dict[str, str], log: Path, *args: str) -> None:
        self.log = log
        self.out = log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "celery_app", "worker", "--loglevel=INFO",
             "--without-heartbeat", "--without-gossip", "--without-mingle", *args],
            cwd=EXAMPLES, env=env, stdout=self.out, stderr=subprocess.STDOUT, start_new_session=True,
        )
        wait_for(f"worker ready (log {log})", lambda: b"ready." in log.read_bytes() or self.proc.poll() is not None)
        assert self.proc.poll() is None, log.read_text()

    def kill(self) -> None:
        """SIGKILL the worker and its pool children: no ack, no cleanup."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.out.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
        self.out.close()


def worker_env(tmp_path: Path) -> dict[str, str]:
    """Worker and client settings: a fresh SQLite file and a queue of this test's own."""
    url = redis_url()
    values = {
        "EIPFLOW_DB": f"sqlite:///{tmp_path / 'celery.db'}",
        "EIPFLOW_BACKEND": "eipflow.backends.simulated:factory",
        "EIPFLOW_CELERY_BROKER": url,
        "EIPFLOW_CELERY_QUEUE": f"eipflow-test-{uuid.uuid4().hex[:10]}",
        "PYTHONPATH": os.pathsep.join([str(EXAMPLES), os.environ.get("PYTHONPATH", "")]),
    }
    return {**os.environ, **values}


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return worker_env(tmp_path)


@pytest.fixture
def client(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """examples/celery_app.py imported in this process, pointing at the test's broker and queue."""
    for key in ("EIPFLOW_CELERY_BROKER", "EIPFLOW_CELERY_QUEUE"):
        monkeypatch.setenv(key, env[key])
    spec = importlib.util.spec_from_file_location(f"celery_app_{uuid.uuid4().hex[:6]}", EXAMPLES / "celery_app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def flow(env: dict[str, str]) -> Iterator[Eipflow]:
    """The test's own view of the worker's database and simulated dataplane."""
    f = Eipflow.open(env["EIPFLOW_DB"], SimulatedDataplane(), owner="celery-test")
    try:
        yield f
    finally:
        f.close()


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    started: list[Worker] = []
    yield started
    for w in started:
        w.stop()


def history(flow: Eipflow, uuid_: str) -> list[tuple[str, str, str]]:
    return [(r.event, r.from_state, r.to_state) for r in flow.history(uuid_)]


def rules(flow: Eipflow) -> list[tuple[str, str, str]]:
    return [(r.host_uuid, r.eip_uuid, r.guest_ip) for r in flow.dataplane()]


def test_attach_and_vm_stop_race_through_a_prefork_worker(
    env: dict[str, str], client: ModuleType, flow: Eipflow, workers: list[Worker], tmp_path: Path
) -> None:
    """S3 via Celery: the VM stops while the attach task's apply is held; the EIP ends released, no rule."""
    gate = tmp_path / "gate"
    gate.mkdir()
    workers.append(Worker({**env, "EIPFLOW_SIM_GATE": str(gate)}, tmp_path / "worker.log",
                          "--pool=prefork", "--concurrency=2"))
    eip = flow.create_eip("203.0.113.10")

    attach = client.tasks.attach.delay(eip.uuid, op_id="race-attach", **BINDING)
    wait_for("the apply to reach the gate", (gate / "entered").exists)
    assert flow.get_eip(eip.uuid).state == "applying"  # the binding is persisted before the apply

    stopped = client.tasks.vm_stopped.delay("vm-1", op_id="race-stop").get(timeout=DEADLINE_S)
    assert [(e["uuid"], e["state"]) for e in stopped] == [(eip.uuid, "applying")]  # recorded, handed on
    (gate / "release").touch()
    result = attach.get(timeout=DEADLINE_S)

    assert (result["state"], result["vm_nic_uuid"], result["applied_host"]) == ("released", "nic-1", None)
    row = flow.get_eip(eip.uuid)
    assert (row.state, row.vm_nic_uuid, row.guest_ip, row.applied_host) == ("released", "nic-1", "10.0.0.5", None)
    assert history(flow, eip.uuid)[1:] == [
        ("attach", "detached", "binding"),
        ("proceed", "binding", "applying"),
        ("vm_stopped", "applying", "applying"),
        ("apply_ok", "applying", "releasing"),
        ("revoke_ok", "releasing", "released"),
    ]
    assert rules(flow) == []
    assert check(flow.store, flow.backend) == []

    # The same task sent again (a retry by the caller): the recorded outcome, no new work.
    again = client.tasks.attach.delay(eip.uuid, op_id="race-attach", **BINDING).get(timeout=DEADLINE_S)
    assert again["state"] == "released"
    assert flow.get_eip(eip.uuid).version == row.version


def test_redelivered_attach_after_a_worker_kill_converges_with_one_effect(
    env: dict[str, str], client: ModuleType, flow: Eipflow, workers: list[Worker], tmp_path: Path
) -> None:
    """kill -9 during the apply (late ack: the message stays unacked); a new worker resumes it once."""
    gate = tmp_path / "gate"
    gate.mkdir()
    fast = {**env, "EIPFLOW_LEASE_SECONDS": "2", "EIPFLOW_CELERY_VISIBILITY_TIMEOUT": "3"}
    first = Worker({**fast, "EIPFLOW_SIM_GATE": str(gate)}, tmp_path / "worker1.log", "--pool=solo")
    workers.append(first)
    eip = flow.create_eip("203.0.113.10")

    attach = client.tasks.attach.delay(eip.uuid, op_id="kill-attach", **BINDING)
    wait_for("the apply to reach the gate", (gate / "entered").exists)
    first.kill()
    row = flow.get_eip(eip.uuid)
    assert (row.state, row.vm_nic_uuid) == ("applying", "nic-1")  # intent persisted, work leased by the dead
    assert rules(flow) == []

    workers.append(Worker(fast, tmp_path / "worker2.log", "--pool=solo"))
    result = attach.get(timeout=DEADLINE_S)

    assert (result["state"], result["applied_host"]) == ("attached", "h1")
    assert rules(flow) == [("h1", eip.uuid, "10.0.0.5")]
    assert b"op_id=kill-attach redelivered=True" in (tmp_path / "worker2.log").read_bytes()
    events = [e for e, _, _ in history(flow, eip.uuid)]
    assert events == ["create", "attach", "proceed", "apply_ok"]  # one attach, one apply: no double work
    items = flow.work_items(eip_uuid=eip.uuid)
    assert [(i.action, i.status, i.attempts) for i in items] == [("apply", "done", 2)]  # claimed by both
    assert check(flow.store, flow.backend) == []


def test_failed_apply_fails_the_task_and_rolls_back(
    env: dict[str, str], client: ModuleType, flow: Eipflow, workers: list[Worker], tmp_path: Path
) -> None:
    """EIPFLOW_SIM_FAIL=apply: the task fails with AttachRolledBack; the EIP is detached, no rule."""
    workers.append(Worker({**env, "EIPFLOW_SIM_FAIL": "apply"}, tmp_path / "worker.log", "--pool=solo"))
    eip = flow.create_eip("203.0.113.10")
    result = client.tasks.attach.delay(eip.uuid, op_id="fail-attach", **BINDING)
    with pytest.raises(Exception) as info:
        result.get(timeout=DEADLINE_S)
    assert type(info.value).__name__ == "AttachRolledBack"
    assert eip.uuid in str(info.value)
    assert flow.get_eip(eip.uuid).state == "detached"
    assert ("apply_failed", "applying", "rolling_back") in history(flow, eip.uuid)
    assert rules(flow) == []
    assert check(flow.store, flow.backend) == []


def test_same_task_id_does_the_work_once_in_process(sqlite_url: str) -> None:
    """Without a broker (eager apply): two runs with one Celery task id share the op id: one apply."""
    from celery import Celery

    from eipflow import InMemoryDataplane
    from eipflow.integrations.celery import register

    backend = InMemoryDataplane()
    with Eipflow.open(sqlite_url, backend, owner="eager") as f:
        tasks = register(Celery("eager", broker="memory://", backend="cache+memory://"), f)
        eip = f.create_eip("203.0.113.10")
        runs = [tasks.attach.apply(args=(eip.uuid,), kwargs=BINDING, task_id="t-1") for _ in range(2)]
        assert [r.get()["state"] for r in runs] == ["attached", "attached"]
        assert len(backend.calls_for(eip.uuid, "apply")) == 1
        assert [r.op_id for r in f.history(eip.uuid) if r.op_id] == ["celery:t-1"]
        stopped = tasks.vm_stopped.apply(args=("vm-1",), task_id="t-2").get()
        assert [e["state"] for e in stopped] == ["released"]
        assert backend.rules() == []
        assert check(f.store, backend) == []
