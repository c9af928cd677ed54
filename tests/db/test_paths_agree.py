"""The driver-level hot path and the SQLAlchemy Core path are one protocol: fed the same random sequence of
intents, attaches, backend outcomes and work, two stores — one per path — end with identical rows, history and
work items (ids, timestamps and owners aside), on every database."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eipflow import Eipflow, EipflowError, InMemoryDataplane, ManualClock, RetryPolicy
from tests._support import fresh_database, skip_reason

OPS = st.lists(
    st.tuples(
        st.sampled_from(["attach", "attach_nowait", "detach", "delete", "vm_stop", "vm_start", "vm_migrate",
                         "fail_next", "run_due"]),
        st.integers(0, 2),  # which EIP / VM
        st.sampled_from(["h1", "h2"]),
    ),
    min_size=1,
    max_size=18,
)


def _run(flow: Eipflow, backend: InMemoryDataplane, ops: list[tuple[str, int, str]]) -> dict[str, Any]:
    eips = [flow.create_eip(f"203.0.113.{n + 1}", op_id=f"create-{n}").uuid for n in range(3)]
    for op, n, host in ops:
        uuid, vm = eips[n], f"vm-{n}"
        try:
            if op.startswith("attach"):
                flow.attach(uuid, nic=f"nic-{n}", guest_ip=f"10.0.0.{n + 1}", vm=vm, host=host,
                            wait=op == "attach")
            elif op == "detach":
                flow.detach(uuid)
            elif op == "delete":
                flow.delete_eip(uuid)
            elif op == "vm_stop":
                flow.vm_stopped(vm)
            elif op == "vm_start":
                flow.vm_started(vm, host)
            elif op == "vm_migrate":
                flow.vm_migrated(vm, host)
            elif op == "fail_next":
                backend.faults.fail("apply", eip_uuid=uuid)
            else:
                flow.run_due()
        except EipflowError:
            pass  # illegal in that state, rolled back, not found: the same outcome on both paths
    rows = [
        (e.uuid, e.state, e.version, e.desired, e.vm_nic_uuid, e.guest_ip, e.vm_uuid, e.host_uuid, e.applied_host,
         e.attach_confirmed, e.work_id is not None, e.last_error)
        for e in flow.list_eips()
    ]
    history = [(r.eip_uuid, r.version, r.event, r.from_state, r.to_state, r.op_id, sorted(r.details))
               for r in flow.store.all_history()]
    work = [(w.eip_uuid, w.action, w.status, w.attempts, w.spec, w.cleanup) for w in flow.work_items()]
    rules = [(r.host_uuid, r.eip_uuid, r.guest_ip, r.generation) for r in backend.rules()]
    return {"rows": rows, "history": history, "work": work, "rules": rules}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres),
                        pytest.param("mariadb", marks=pytest.mark.mariadb)])
def kind(request: pytest.FixtureRequest) -> Iterator[str]:
    reason = skip_reason(request.param)
    if reason:
        pytest.skip(reason)
    yield request.param


def test_both_execution_paths_write_the_same(kind: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    @settings(max_examples=12 if kind == "sqlite" else 5, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(ops=OPS)
    def check(ops: list[tuple[str, int, str]]) -> None:
        outcomes = []
        with ExitStack() as stack:
            for fast in (True, False):
                where = Path(tmp_path_factory.mktemp("paths"))
                url = stack.enter_context(fresh_database(kind, where))
                backend = InMemoryDataplane()
                flow = Eipflow.open(url, backend, clock=ManualClock(), owner="same", fast_path=fast,
                                    retry=RetryPolicy(max_attempts=2, base_delay_s=0, jitter=0))
                stack.callback(flow.close)
                assert (flow.store._fast is not None) is fast
                outcomes.append(_run(flow, backend, ops))
        fast_out, core_out = outcomes
        for key in fast_out:
            assert fast_out[key] == core_out[key], key

    check()
