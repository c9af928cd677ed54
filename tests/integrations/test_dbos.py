"""DBOS Transact workflows with eipflow steps: killed with SIGKILL, recovered by DBOS in a new process.

The workflow is ``examples/dbos_boot_vm.py`` (allocate → boot VM → VM placement → attach → DNS), run as
a real process on SQLite (DBOS's tables in eipflow's file) and PostgreSQL (one database: eipflow's
tables in the test's schema, DBOS's in a schema of their own). The dataplane is the database-backed
simulated one, wrapped to append every apply that reaches it to a file, so the test counts applies
across processes. The attach's backend call is held with the cross-process fifo gate
(``EIPFLOW_SIM_GATE``); kills between steps use the integration's crash points
(``EIPFLOW_CRASH_AT=dbos_step_done:attach`` / ``dbos_step_checkpointed:attach``). The process that
recovers the workflow is started with ``--recover``: it starts nothing itself, ``DBOS.launch()``
recovers the dead process's pending workflow.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import select
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from eipflow import Eipflow, InMemoryDataplane, SimulatedDataplane
from eipflow.backends.batch import Change
from eipflow.errors import AttachFailed, InvalidInput, OperationIdReused, StaleGeneration
from eipflow.invariants import check
from tests._support import PG_ENV, fresh_database, skip_reason

dbos = pytest.importorskip("dbos", reason="the DBOS tests need DBOS Transact: pip install 'eipflow[dbos]'")

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "dbos_boot_vm.py"
APPLY_LOG_ENV = "EIPFLOW_TEST_APPLY_LOG"
DEADLINE_S = 120.0
WORKFLOW = "boot-vm-1"
STEPS = ["eipflow.create_eip", "boot_vm", "eipflow.vm_started", "eipflow.attach", "publish_dns"]
ATTACH_STEP = 4  # the attach's position in the workflow: its operation id is dbos:<workflow>/4


class CountingDataplane(SimulatedDataplane):
    """The database-backed simulated dataplane that appends every apply reaching it to ``$EIPFLOW_TEST_APPLY_LOG``.

    The line is written before the rule (one ``O_APPEND`` write per line), so an apply that got as far as
    the dataplane is counted even if its process dies right after.
    """

    def _effect_many(self, changes: Sequence[Change]) -> list[bool | StaleGeneration]:
        log = os.environ.get(APPLY_LOG_ENV)
        if log:
            with open(log, "a") as out:
                for change in changes:
                    if change.action == "apply":
                        spec = change.spec
                        out.write(json.dumps({"eip": spec.eip_uuid, "host": spec.host_uuid, "pid": os.getpid()}) + "\n")
        return super()._effect_many(changes)


def counting_factory() -> CountingDataplane:
    """``EIPFLOW_BACKEND=tests.integrations.test_dbos:counting_factory``."""
    return CountingDataplane()


@dataclass
class Databases:
    """eipflow's URL and the schema of DBOS's system tables in the same database."""

    url: str
    schema: str


@pytest.fixture(params=[pytest.param("sqlite", id="sqlite"),
                        pytest.param("postgres", id="postgres", marks=pytest.mark.postgres)])
def databases(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Databases]:
    reason = skip_reason(request.param)
    if reason:
        pytest.skip(reason)
    schema = f"dbos_{uuid.uuid4().hex[:10]}"
    with fresh_database(request.param, tmp_path) as url:
        try:
            yield Databases(url, schema)
        finally:
            if request.param == "postgres":
                admin = sa.create_engine(os.environ[PG_ENV], isolation_level="AUTOCOMMIT")
                with admin.connect() as conn:
                    conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
                admin.dispose()


class PipeGate:
    """The cross-process gate of eipflow.backends.faults, as two named pipes.

    Both ends wait on the pipes themselves (``select``), checking every half second that the process
    holding the other end is still alive, so a process that dies early fails the test instead of hanging it.
    """

    def __init__(self, root: Path) -> None:
        root.mkdir()
        self.root = root
        os.mkfifo(root / "entered")
        os.mkfifo(root / "release")
        self.env = {"EIPFLOW_SIM_GATE": str(root)}

    def wait_entered(self, proc: subprocess.Popen[bytes]) -> int:
        """Block until ``proc``'s apply reaches the gate; returns the pid written by the process holding it."""
        fd = os.open(self.root / "entered", os.O_RDONLY | os.O_NONBLOCK)
        try:
            deadline = time.monotonic() + DEADLINE_S
            data = b""
            while not data.endswith(b"\n"):
                assert proc.poll() is None, f"exited with {proc.returncode} before reaching the gate"
                assert time.monotonic() < deadline, "no apply reached the gate"
                ready, _, _ = select.select([fd], [], [], 0.5)
                if ready:
                    data += os.read(fd, 64)
            return int(data)
        finally:
            os.close(fd)

    def release(self, proc: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + DEADLINE_S
        while True:
            try:
                fd = os.open(self.root / "release", os.O_WRONLY | os.O_NONBLOCK)
                break
            except OSError as exc:  # ENXIO: the held apply has not opened its end yet
                if exc.errno != errno.ENXIO:
                    raise
                assert proc.poll() is None and time.monotonic() < deadline, "the held apply is gone"
                time.sleep(0.05)  # polling another process's progress, not waiting out a race
        os.write(fd, b"go\n")
        os.close(fd)


@dataclass
class App:
    """Runs examples/dbos_boot_vm.py as a separate process against the test's databases."""

    db: Databases
    tmp: Path

    @property
    def applies_log(self) -> Path:
        return self.tmp / "applies.log"

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("EIPFLOW_")}
        env.update({
            "EIPFLOW_BACKEND": "tests.integrations.test_dbos:counting_factory",
            APPLY_LOG_ENV: str(self.applies_log),
            "EIPFLOW_LEASE_SECONDS": "1",  # the recovering process takes the dead one's work over after 1 s
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        })
        env.update(extra or {})
        return env

    def start(self, name: str, *args: str, extra: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        cmd = [sys.executable, str(EXAMPLE), "--db", self.db.url, "--schema", self.db.schema,
               "--workflow-id", WORKFLOW, "--json", "-v", *args]
        with (self.tmp / f"{name}.out").open("wb") as out, (self.tmp / f"{name}.err").open("wb") as err:
            return subprocess.Popen(cmd, env=self.env(extra), stdout=out, stderr=err, cwd=ROOT)

    def finish(self, name: str, proc: subprocess.Popen[bytes]) -> tuple[int, dict[str, Any]]:
        rc = proc.wait(timeout=DEADLINE_S)
        out = (self.tmp / f"{name}.out").read_text()
        assert out, f"{name}: rc={rc}, no output\n{self.stderr(name)}"
        return rc, json.loads(out)

    def stderr(self, name: str) -> str:
        return (self.tmp / f"{name}.err").read_text()

    def executed_steps(self, name: str) -> list[str]:
        """The eipflow steps whose bodies ran in that process (DBOS replays checkpointed ones without running them)."""
        names = []
        for line in self.stderr(name).splitlines():
            if line.startswith("{"):
                event = json.loads(line)
                if event.get("event") == "dbos.step":
                    names.append(event["step_name"])
        return names

    def applies(self) -> list[dict[str, Any]]:
        if not self.applies_log.exists():
            return []
        return [json.loads(line) for line in self.applies_log.read_text().splitlines()]

    def flow(self) -> Eipflow:
        return Eipflow.open(self.db.url, CountingDataplane(), owner="dbos-test")

    def reconcile(self) -> dict[str, Any]:
        done = subprocess.run(
            [sys.executable, "-m", "eipflow", "--db", self.db.url, "--json", "reconcile"],
            env=self.env(), capture_output=True, text=True, timeout=DEADLINE_S, cwd=ROOT,
        )
        assert done.returncode == 0, done.stderr
        report: dict[str, Any] = json.loads(done.stdout)
        return report

    def workflow_status(self) -> str:
        client = dbos.DBOSClient(system_database_url=self.db.url, dbos_system_schema=self.db.schema)
        try:
            return str(client.retrieve_workflow(WORKFLOW).get_status().status)
        finally:
            client.destroy()


@pytest.fixture
def app(databases: Databases, tmp_path: Path) -> App:
    return App(databases, tmp_path)


def _only_eip(flow: Eipflow) -> str:
    (eip,) = flow.list_eips()
    return eip.uuid


def _assert_recovered(app: App, out: dict[str, Any], *, applied_by: int) -> None:
    """The recovered workflow completed with one attach, one apply and one rule; nothing left to repair."""
    assert out["status"] == "SUCCESS", out
    assert [s["name"] for s in out["steps"]] == STEPS
    assert out["result"]["state"] == "attached"
    uuid_ = out["eip_uuid"]
    applies = [a for a in app.applies() if a["eip"] == uuid_]
    assert len(applies) == 1, applies  # exactly one apply reached the dataplane for this attach
    assert applies[0]["pid"] == applied_by
    with app.flow() as flow:
        history = flow.history(uuid_)
        assert [r.event for r in history] == ["create", "attach", "proceed", "apply_ok"]
        assert [r.op_id for r in history if r.event == "attach"] == [f"dbos:{WORKFLOW}/{ATTACH_STEP}"]
        assert [(r.host_uuid, r.eip_uuid, r.guest_ip) for r in flow.dataplane()] == [("compute-1", uuid_, "10.0.0.5")]
        assert check(flow.store, flow.backend) == []
    assert out["violations"] == []
    assert app.reconcile()["planned"] == []


@pytest.mark.slow
def test_killed_while_the_attach_apply_is_held(app: App, tmp_path: Path) -> None:
    """kill -9 while the attach step's apply is held at the gate; DBOS recovers the workflow in a new process."""
    gate = PipeGate(tmp_path / "gate")
    first = app.start("first", extra=gate.env)
    assert gate.wait_entered(first) == first.pid
    with app.flow() as flow:
        eip = flow.get_eip(_only_eip(flow))
        assert (eip.state, eip.vm_nic_uuid) == ("applying", "nic-7")  # the binding is persisted before the apply
        assert flow.dataplane() == []
    first.send_signal(signal.SIGKILL)
    assert first.wait(timeout=DEADLINE_S) == -signal.SIGKILL
    assert app.applies() == []  # the held apply never reached the dataplane
    assert app.workflow_status() == "PENDING"

    second = app.start("second", "--recover")
    rc, out = app.finish("second", second)
    assert rc == 0, app.stderr("second")
    _assert_recovered(app, out, applied_by=second.pid)  # the one apply is the recovering process's
    # DBOS replayed the checkpointed steps and re-ran the attach, which resumed the same operation.
    assert app.executed_steps("second") == ["eipflow.attach"]
    with app.flow() as flow:
        (item,) = flow.work_items(eip_uuid=out["eip_uuid"])
        assert (item.action, item.status, item.attempts) == ("apply", "done", 2)  # claimed by both processes


@pytest.mark.slow
def test_killed_after_the_attach_step_was_checkpointed(app: App) -> None:
    """kill -9 between the attach step and the DNS step: the recovery replays the attach without running it."""
    first = app.start("first", extra={"EIPFLOW_CRASH_AT": "dbos_step_checkpointed:attach"})
    assert first.wait(timeout=DEADLINE_S) == -signal.SIGKILL, app.stderr("first")
    assert app.executed_steps("first") == ["eipflow.create_eip", "eipflow.vm_started", "eipflow.attach"]
    assert len(app.applies()) == 1

    rc, out = app.finish("second", app.start("second", "--recover"))
    assert rc == 0, app.stderr("second")
    _assert_recovered(app, out, applied_by=first.pid)
    assert app.executed_steps("second") == []  # every eipflow step was replayed from its checkpoint


@pytest.mark.slow
def test_killed_after_the_attach_before_its_checkpoint(app: App) -> None:
    """kill -9 after eipflow finished the attach but before DBOS checkpointed the step: the re-run replays it."""
    first = app.start("first", extra={"EIPFLOW_CRASH_AT": "dbos_step_done:attach"})
    assert first.wait(timeout=DEADLINE_S) == -signal.SIGKILL, app.stderr("first")
    assert len(app.applies()) == 1

    rc, out = app.finish("second", app.start("second", "--recover"))
    assert rc == 0, app.stderr("second")
    _assert_recovered(app, out, applied_by=first.pid)
    # DBOS had no checkpoint for step 4, so it ran the step again: same operation id, recorded outcome.
    assert app.executed_steps("second") == ["eipflow.attach"]


@pytest.mark.slow
def test_cancelled_during_the_attach_then_resumed(app: App, tmp_path: Path) -> None:
    """Cancelled while the attach's apply is held: the attach completes in eipflow, DNS never runs.

    The EIP is left ``attached`` with its rule (the state docs/embedding.md names) and reconcile finds
    nothing to repair. DBOS drops the cancelled step's checkpoint, so resuming the workflow re-runs the
    attach step: its operation id makes eipflow replay the outcome, with no second apply.
    """
    gate = PipeGate(tmp_path / "gate")
    first = app.start("first", extra=gate.env)
    gate.wait_entered(first)
    client = dbos.DBOSClient(system_database_url=app.db.url, dbos_system_schema=app.db.schema)
    try:
        client.cancel_workflow(WORKFLOW)
    finally:
        client.destroy()
    gate.release(first)
    rc, out = app.finish("first", first)

    assert rc == 1 and out["status"] == "CANCELLED", app.stderr("first")
    assert "DBOSAwaitedWorkflowCancelledError" in out["error"]
    assert [s["name"] for s in out["steps"]] == STEPS[:3]  # the attach ran, but its checkpoint was refused
    assert out["eip_state"] == "attached"
    assert len(app.applies()) == 1
    with app.flow() as flow:
        uuid_ = _only_eip(flow)
        assert [r.event for r in flow.history(uuid_)] == ["create", "attach", "proceed", "apply_ok"]
        assert flow.work_items(statuses=["pending", "running"]) == []
        assert [(r.host_uuid, r.guest_ip) for r in flow.dataplane()] == [("compute-1", "10.0.0.5")]
        assert check(flow.store, flow.backend) == []
    report = app.reconcile()
    assert report["planned"] == [] and report["drift_checked"] is True

    client = dbos.DBOSClient(system_database_url=app.db.url, dbos_system_schema=app.db.schema)
    try:
        client.resume_workflow(WORKFLOW)
    finally:
        client.destroy()
    rc, out = app.finish("second", app.start("second", "--recover"))
    assert rc == 0, app.stderr("second")
    _assert_recovered(app, out, applied_by=first.pid)
    assert app.executed_steps("second") == ["eipflow.attach"]  # re-run, replayed by eipflow


# -- in-process: the step machinery ------------------------------------------------------------------


def forget_dbos_console_handler() -> None:
    """Drop the console handler DBOS put on its ``dbos`` logger, so the next DBOS() makes a fresh one.

    DBOS creates that handler once per process, bound to the ``sys.stderr`` of the moment; under
    pytest's capture that stream is closed after the test, and the next DBOS() would flush into it.
    """
    logger = logging.getLogger("dbos")
    for handler in [h for h in logger.handlers if h.name == "__dbos_console_log_handler__"]:
        logger.removeHandler(handler)


@pytest.fixture
def dbos_sqlite(tmp_path: Path) -> Iterator[str]:
    """A DBOS instance on a fresh SQLite system database; register workflows, then ``DBOS.launch()``.

    Destroyed afterwards with its registry, which stops and joins its background threads (the
    leaked-thread check runs after this fixture's teardown).
    """
    url = f"sqlite:///{tmp_path / 'dbos.db'}"
    from eipflow.integrations.dbos import shared_config

    forget_dbos_console_handler()
    dbos.DBOS(config=shared_config(url, name="eipflow-test", application_version="test", log_level="WARNING"))
    try:
        yield url
    finally:
        dbos.DBOS.destroy(destroy_registry=True)
        forget_dbos_console_handler()


def test_operation_id_is_the_workflow_id_and_step_position() -> None:
    """Plain workflow ids are kept readable; long or unusual ones are hashed; outside a step it refuses."""
    from eipflow.integrations.dbos import operation_id

    assert operation_id("boot-42", 4) == "dbos:boot-42/4"
    odd = operation_id("req 42 (retry)", 3)
    assert odd.startswith("dbos:sha256:") and odd.endswith("/3") and len(odd) <= 128
    assert operation_id("x" * 200, 1) == operation_id("x" * 200, 1) != operation_id("x" * 200, 2)
    with pytest.raises(InvalidInput, match="needs a running DBOS step"):
        operation_id()


def test_bad_configuration_is_refused() -> None:
    """DBOS cannot share a MariaDB database; a step needs a positive wait."""
    from eipflow.integrations.dbos import EipflowSteps, shared_config

    assert shared_config("sqlite:///x.db", name="app")["system_database_url"] == "sqlite:///x.db"
    assert shared_config("postgresql+psycopg://u@h/db", name="app", schema="sys")["dbos_system_schema"] == "sys"
    with pytest.raises(InvalidInput, match="PostgreSQL or SQLite, not mysql"):
        shared_config("mysql+pymysql://root@127.0.0.1/test", name="app")
    with pytest.raises(InvalidInput, match="not a database URL"):
        shared_config("nonsense", name="app")
    with pytest.raises(InvalidInput, match="settle_timeout_s"):
        EipflowSteps(lambda: pytest.fail("not opened"), settle_timeout_s=0)


def test_only_retryable_errors_are_retried_by_dbos() -> None:
    """DBOS's should_retry follows eipflow's ``retryable``; an attach that failed is final."""
    from eipflow.errors import BackendError, ConflictError, IllegalTransition, StepPending
    from eipflow.integrations.dbos import DEFAULT_STEP_OPTIONS, retryable

    assert DEFAULT_STEP_OPTIONS["should_retry"] is retryable
    assert retryable(StepPending("u", "applying", 1))
    assert retryable(ConflictError("operation dbos:wf/4 is still running in another caller; retry later"))
    assert not retryable(AttachFailed("u", "boom", "detached"))
    assert not retryable(IllegalTransition(eip_uuid="u", state="attached", event="attach", allowed=["detach"]))
    assert not retryable(BackendError("refused", retryable=False))
    assert not retryable(RuntimeError("not eipflow's"))


def test_replayed_steps_do_the_work_once(dbos_sqlite: str, sqlite_url: str) -> None:
    """Two workflows, each attaching and detaching: every eipflow step gets its own id; a repeat run replays."""
    from eipflow.integrations.dbos import EipflowSteps

    backend = InMemoryDataplane()
    with Eipflow.open(sqlite_url, backend, owner="dbos-unit") as flow:
        eips = EipflowSteps(flow)
        created = flow.create_eip("203.0.113.20")

        @dbos.DBOS.workflow(name="attach_then_detach")
        def attach_then_detach(uuid_: str) -> list[str]:
            a = eips.attach(uuid_, nic="nic-1", guest_ip="10.0.0.9", vm="vm-9", host="h9")
            d = eips.detach(uuid_)
            return [a.state, d.state]

        dbos.DBOS.launch()
        with dbos.SetWorkflowID("wf-a"):
            assert attach_then_detach(created.uuid) == ["attached", "detached"]
        with dbos.SetWorkflowID("wf-a"):  # the same workflow id again: DBOS returns the recorded result
            assert attach_then_detach(created.uuid) == ["attached", "detached"]
        assert [c.action for c in backend.calls_for(created.uuid)] == ["apply", "revoke"]
        ops = [(r.event, r.op_id) for r in flow.history(created.uuid) if r.op_id]
        assert ops == [("attach", "dbos:wf-a/1"), ("detach", "dbos:wf-a/2")]
        # What a re-run attach step does first, under the same operation id: the recorded answer, no new work.
        again = flow.attach(created.uuid, nic="nic-1", guest_ip="10.0.0.9", vm="vm-9", host="h9",
                            op_id="dbos:wf-a/1", wait=False)
        assert (again.state, again.version) == ("binding", 2) and len(backend.calls_for(created.uuid)) == 2
        with pytest.raises(OperationIdReused):
            flow.detach(created.uuid, op_id="dbos:wf-a/1")


def test_a_fork_from_the_attach_is_a_new_attach(dbos_sqlite: str, sqlite_url: str) -> None:
    """A fork has a new workflow id, so its re-run attach is a new operation: refused, the EIP untouched."""
    from eipflow.errors import IllegalTransition
    from eipflow.integrations.dbos import EipflowSteps

    backend = InMemoryDataplane()
    with Eipflow.open(sqlite_url, backend, owner="dbos-unit") as flow:
        eips = EipflowSteps(flow)

        @dbos.DBOS.workflow(name="create_and_attach")
        def create_and_attach(vip: str) -> str:
            eip = eips.create_eip(vip)
            return eips.attach(eip.uuid, nic="nic-5", guest_ip="10.0.0.14", vm="vm-14", host="h14").state

        dbos.DBOS.launch()
        with dbos.SetWorkflowID("wf-orig"):
            assert create_and_attach("203.0.113.26") == "attached"
        fork = dbos.DBOS.fork_workflow("wf-orig", 2)  # step 1 (the create) is copied, step 2 runs again
        with pytest.raises(IllegalTransition) as info:
            fork.get_result()
        assert info.value.state == "attached"
        (eip,) = flow.list_eips()
        assert (eip.state, eip.version) == ("attached", 4)
        assert [r.op_id for r in flow.history(eip.uuid) if r.op_id] == ["dbos:wf-orig/1", "dbos:wf-orig/2"]
        assert len(backend.calls_for(eip.uuid, "apply")) == 1


def test_failed_attach_is_checkpointed_as_attach_failed(dbos_sqlite: str, sqlite_url: str) -> None:
    """The apply fails: the step raises AttachFailed, DBOS checkpoints it, and its replay raises it again."""
    from eipflow.integrations.dbos import EipflowSteps

    backend = InMemoryDataplane()
    backend.faults.fail("apply")
    with Eipflow.open(sqlite_url, backend, owner="dbos-unit") as flow:
        eips = EipflowSteps(flow)
        created = flow.create_eip("203.0.113.21")

        @dbos.DBOS.workflow(name="attach_fails")
        def attach_fails(uuid_: str) -> str:
            try:
                eips.attach(uuid_, nic="nic-2", guest_ip="10.0.0.10", vm="vm-10", host="h10")
            except AttachFailed as exc:
                return f"{exc.eip_uuid}:{exc.state}"
            return "attached"

        dbos.DBOS.launch()
        with dbos.SetWorkflowID("wf-fail"):
            assert attach_fails(created.uuid) == f"{created.uuid}:detached"
        (step,) = dbos.DBOS.list_workflow_steps("wf-fail")
        assert step["function_name"] == "eipflow.attach"
        assert isinstance(step["error"], AttachFailed)  # unpickled from the checkpoint, attributes intact
        assert (step["error"].eip_uuid, step["error"].state) == (created.uuid, "detached")
        assert flow.get_eip(created.uuid).state == "detached" and backend.rules() == []
        assert len(backend.calls_for(created.uuid, "apply")) == 1  # not retried: AttachFailed is not retryable


def test_a_rerun_detach_step_waits_for_the_dead_lease_then_revokes_once(dbos_sqlite: str, sqlite_url: str) -> None:
    """The detach step's first run recorded the intent and leased the revoke, then died: the re-run resumes it."""
    from eipflow.integrations.dbos import EipflowSteps

    backend = InMemoryDataplane()
    with Eipflow.open(sqlite_url, backend, owner="dbos-unit") as flow:
        eips = EipflowSteps(flow)
        eip = flow.create_eip("203.0.113.25")
        flow.attach(eip.uuid, nic="nic-4", guest_ip="10.0.0.13", vm="vm-13", host="h13")
        # What the dead first run of step 1 of wf-d left: the intent under its operation id, the revoke leased.
        row = flow.detach(eip.uuid, op_id="dbos:wf-d/1", wait=False)
        assert row.state == "detaching" and row.work_id is not None
        assert flow.store.claim(row.work_id, "dead-process", 0.3) is not None

        @dbos.DBOS.workflow(name="detach_only")
        def detach_only(uuid_: str) -> str:
            return eips.detach(uuid_).state

        dbos.DBOS.launch()
        with dbos.SetWorkflowID("wf-d"):
            assert detach_only(eip.uuid) == "detached"
        assert [c.action for c in backend.calls_for(eip.uuid)] == ["apply", "revoke"]
        assert [r.event for r in flow.history(eip.uuid)].count("detach") == 1
        (revoke,) = [i for i in flow.work_items(eip_uuid=eip.uuid) if i.action == "revoke"]
        assert (revoke.status, revoke.attempts) == ("done", 2)  # claimed by the dead run, then by the re-run


def test_an_async_workflow_runs_the_steps_in_a_thread(dbos_sqlite: str, sqlite_url: str) -> None:
    """``await asyncio.to_thread(eips.attach, …)`` carries DBOS's context: the same steps and operation ids."""
    import asyncio

    from eipflow.integrations.dbos import EipflowSteps

    backend = InMemoryDataplane()
    with Eipflow.open(sqlite_url, backend, owner="dbos-unit") as flow:
        eips = EipflowSteps(flow)

        @dbos.DBOS.workflow(name="async_attach")
        async def async_attach(vip: str) -> str:
            eip = await asyncio.to_thread(eips.create_eip, vip)
            attached = await asyncio.to_thread(
                lambda: eips.attach(eip.uuid, nic="nic-3", guest_ip="10.0.0.12", vm="vm-12", host="h12"))
            return attached.state

        async def start() -> str:
            with dbos.SetWorkflowID("wf-async"):
                return await async_attach("203.0.113.24")

        dbos.DBOS.launch()
        assert asyncio.run(start()) == "attached"
        steps = [(s["function_id"], s["function_name"]) for s in dbos.DBOS.list_workflow_steps("wf-async")]
        assert steps == [(1, "eipflow.create_eip"), (2, "eipflow.attach")]
        (eip,) = flow.list_eips()
        assert [r.op_id for r in flow.history(eip.uuid) if r.op_id] == ["dbos:wf-async/1", "dbos:wf-async/2"]
        assert [(r.host_uuid, r.guest_ip) for r in backend.rules()] == [("h12", "10.0.0.12")]


def test_outside_a_workflow_the_steps_are_plain_calls(sqlite_url: str) -> None:
    """No workflow running: the call runs directly with the caller's op_id."""
    from eipflow.integrations.dbos import EipflowSteps

    backend = InMemoryDataplane()
    with Eipflow.open(sqlite_url, backend, owner="dbos-unit") as flow:
        eips = EipflowSteps(flow)
        eip = eips.create_eip("203.0.113.22", op_id="plain-create")
        assert eips.create_eip("203.0.113.22", op_id="plain-create").uuid == eip.uuid
        assert eips.attach(eip.uuid, nic="n", guest_ip="10.0.0.11", vm="v", host="h").state == "attached"
        [released] = eips.vm_stopped("v")
        assert released.state == "released" and backend.rules() == []
        assert eips.delete_eip(eip.uuid).state == "deleted"


def test_a_create_rerun_after_its_caller_died_finds_its_eip(sqlite_url: str) -> None:
    """The first run created the EIP and died before recording the outcome: the re-run returns that EIP."""
    from eipflow import ManualClock
    from eipflow.store.store import OPERATION

    clock = ManualClock()
    with Eipflow.open(sqlite_url, InMemoryDataplane(), clock=clock, lease_seconds=5, owner="dbos-unit") as flow:
        first = flow.create_eip("203.0.113.23", "web", op_id="dbos:wf-c/1")
        # What a process killed between the create's commit and the outcome's leaves: the operation "running".
        with flow.store.engine.begin() as conn:
            conn.execute(OPERATION.update().where(OPERATION.c.op_id == "dbos:wf-c/1").values(status="running"))
        clock.advance(10)  # past the dead caller's lease: the re-run takes the operation over
        again = flow.create_eip("203.0.113.23", "web", op_id="dbos:wf-c/1")
        assert again.uuid == first.uuid
        assert [e.uuid for e in flow.list_eips()] == [first.uuid]
        assert [r.event for r in flow.history(first.uuid)] == ["create"]
        assert flow.operations.get("dbos:wf-c/1")["status"] == "done"


def test_the_core_never_imports_dbos() -> None:
    """``import eipflow`` (and its CLI) leave DBOS unimported: the integration is opt-in."""
    code = "import sys, eipflow, eipflow.cli, eipflow.integrations; sys.exit('dbos' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0
