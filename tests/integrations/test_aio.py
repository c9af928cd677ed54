"""AsyncEipflow: the sync engine off the event loop, with sync and async backends."""

from __future__ import annotations

import asyncio
import threading

import pytest

from eipflow import AsyncEipflow, AttachFailed, EipSpec, InMemoryDataplane
from eipflow.aio import SyncBackendBridge, is_async_backend
from eipflow.invariants import check

VIP = "203.0.113.10"


class AsyncBackend:
    """An async backend over an in-memory dataplane that records which thread ran each coroutine."""

    def __init__(self) -> None:
        self.table = InMemoryDataplane()
        self.threads: list[int] = []

    async def apply(self, spec: EipSpec) -> None:
        self.threads.append(threading.get_ident())
        await asyncio.sleep(0)
        self.table.apply(spec)

    async def revoke(self, spec: EipSpec) -> None:
        self.threads.append(threading.get_ident())
        self.table.revoke(spec)

    async def rules(self, host_uuid: str | None = None) -> list[EipSpec]:
        return self.table.rules(host_uuid)


def test_async_backend_coroutines_run_on_the_callers_loop(sqlite_url: str) -> None:
    """An async backend is bridged: its coroutines run on the loop thread, the engine in a worker."""
    backend = AsyncBackend()
    assert is_async_backend(backend)

    async def scenario() -> tuple[int, str, list[EipSpec]]:
        async with await AsyncEipflow.open(sqlite_url, backend, owner="t") as flow:
            assert isinstance(flow.backend, SyncBackendBridge)
            eip = await flow.create_eip(VIP)
            done = await flow.attach(eip.uuid, nic="nic-1", guest_ip="10.0.0.5", vm="vm-1", host="h1")
            return threading.get_ident(), done.state, await flow.dataplane()

    loop_thread, state, rules = asyncio.run(scenario())
    assert state == "attached"
    assert backend.threads == [loop_thread]
    assert [(r.host_uuid, r.guest_ip) for r in rules] == [("h1", "10.0.0.5")]


def test_bridge_refuses_to_block_its_own_loop() -> None:
    """Calling a bridged async backend on its loop's thread would deadlock: it raises instead."""
    backend = AsyncBackend()

    async def scenario() -> None:
        bridge = SyncBackendBridge(backend, asyncio.get_running_loop())
        bridge.apply(EipSpec("e", VIP, "nic-1", "10.0.0.5", "h1"))

    with pytest.raises(RuntimeError, match="own event loop"):
        asyncio.run(scenario())
    assert backend.table.rules() == []


def test_loop_stays_free_while_apply_blocks_and_vm_stop_wins(sqlite_url: str) -> None:
    """S3 through the async API: the loop serves a VM stop while the attach's apply is held at a gate."""
    backend = InMemoryDataplane()
    gate = backend.faults.block("apply")

    async def scenario() -> tuple[str, list[str], list[tuple[str, str, str]]]:
        async with await AsyncEipflow.open(sqlite_url, backend, owner="t") as flow:
            eip = await flow.create_eip(VIP)
            attach = asyncio.create_task(
                flow.attach(eip.uuid, nic="nic-1", guest_ip="10.0.0.5", vm="vm-1", host="h1", op_id="req-1")
            )
            await asyncio.to_thread(gate.wait_entered)
            during = await flow.get_eip(eip.uuid)  # the loop is not blocked by the apply
            stopped = await flow.vm_stopped("vm-1", op_id="stop-1")
            gate.release()
            done = await attach
            history = [(r.event, r.from_state, r.to_state) for r in await flow.history(eip.uuid)]
            assert check(flow.sync.store, backend) == []
            return done.state, [during.state, *(e.state for e in stopped)], history

    state, seen, history = asyncio.run(scenario())
    assert seen == ["applying", "applying"]
    assert state == "released"
    assert ("apply_ok", "applying", "releasing") in history
    assert history[-1] == ("revoke_ok", "releasing", "released")
    assert backend.rules() == []


def test_retried_attach_with_the_same_op_id_does_the_work_once(sqlite_url: str) -> None:
    """Two concurrent awaits of one operation id: one apply, one answer; a failed attach replays too."""
    backend = InMemoryDataplane()

    async def scenario() -> None:
        async with await AsyncEipflow.open(sqlite_url, backend, owner="t", max_workers=4) as flow:
            eip = await flow.create_eip(VIP, op_id="create-1")
            again = await flow.create_eip(VIP, op_id="create-1")
            assert again.uuid == eip.uuid
            first, second = await asyncio.gather(
                *(flow.attach(eip.uuid, nic="nic-1", guest_ip="10.0.0.5", vm="vm-1", host="h1", op_id="req-1")
                  for _ in range(2))
            )
            assert (first.state, second.state) == ("attached", "attached")
            assert first.version == second.version
            assert len(backend.calls_for(eip.uuid, "apply")) == 1

            other = await flow.create_eip("203.0.113.11")
            backend.faults.fail("apply", times=1, eip_uuid=other.uuid)
            for _ in range(2):
                with pytest.raises(AttachFailed):
                    await flow.attach(other.uuid, nic="nic-2", guest_ip="10.0.0.6", vm="vm-2", host="h1",
                                      op_id="req-2")
            assert len(backend.calls_for(other.uuid, "apply")) == 1
            assert (await flow.get_eip(other.uuid)).state == "detached"
            assert check(flow.sync.store, backend) == []

    asyncio.run(scenario())
    assert {(r.host_uuid, r.guest_ip) for r in backend.rules()} == {("h1", "10.0.0.5")}
