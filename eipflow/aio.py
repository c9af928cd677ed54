"""The asyncio face of eipflow: :class:`AsyncEipflow`.

There is one engine, the synchronous one (:class:`~eipflow.Eipflow`); this module only moves its
calls off the event loop. Every method runs the matching sync call in a worker thread, so a slow
backend call or a database lock never blocks the loop, and the guarantees (intent before action,
version-checked writes, operation ids) are exactly those of the sync API.

Backends may be sync or async. An async backend (``async def apply``/``revoke``) is wrapped in
:class:`SyncBackendBridge`: the engine, running in a worker thread, hands each coroutine to the
event loop that opened the :class:`AsyncEipflow` and waits for its result there
(:func:`asyncio.run_coroutine_threadsafe`). The coroutine therefore runs on the caller's loop with
its clients and connections, and the loop stays free while the engine waits.

Cancelling an awaiting task does not stop the engine call already running in its thread (threads
cannot be interrupted): the call finishes and records its outcome. Repeat the call with the same
``op_id`` to learn it; that repeat does no new work.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ParamSpec, TypeVar

from .api import Eipflow
from .backends.base import Backend
from .values import Eip, EipSpec, TransitionRecord, Vm, WorkItem

__all__ = ["AsyncEipflow", "SyncBackendBridge", "is_async_backend"]

P = ParamSpec("P")
T = TypeVar("T")

#: How long a bridged backend call may take before the engine treats it as an unknown outcome.
BRIDGE_TIMEOUT_S = 300.0


def is_async_backend(backend: object) -> bool:
    """True when the backend's ``apply`` or ``revoke`` is a coroutine function."""
    return any(inspect.iscoroutinefunction(getattr(backend, name, None)) for name in ("apply", "revoke"))


class SyncBackendBridge:
    """A sync :class:`~eipflow.Backend` over an async one, whose coroutines run on ``loop``.

    The engine calls ``apply``/``revoke`` from worker threads; each call schedules the backend's
    coroutine on ``loop`` and blocks that worker thread (never the loop) until it finishes. A method
    of the wrapped backend that is a plain function is called directly. ``rules()`` is bridged too
    when the backend has it, so :meth:`AsyncEipflow.dataplane` and the invariant checker work.
    """

    def __init__(self, backend: Any, loop: asyncio.AbstractEventLoop, *, timeout: float = BRIDGE_TIMEOUT_S) -> None:
        self.backend = backend
        self.loop = loop
        self.timeout = timeout
        if callable(getattr(backend, "rules", None)):
            # Only then does the bridge satisfy ListsRules (an isinstance check on the attribute).
            self.rules = self._rules

    def _run(self, name: str, *args: Any) -> Any:
        fn = getattr(self.backend, name)
        if not inspect.iscoroutinefunction(fn):
            return fn(*args)
        if _running_loop() is self.loop:
            # Blocking here would wait for a coroutine that needs this very thread: a deadlock.
            raise RuntimeError(
                f"async backend {type(self.backend).__name__}.{name} called on its own event loop's thread; "
                "use AsyncEipflow, which runs the engine in worker threads"
            )
        future = asyncio.run_coroutine_threadsafe(fn(*args), self.loop)
        try:
            return future.result(self.timeout)
        except TimeoutError:
            future.cancel()
            raise

    def apply(self, spec: EipSpec) -> None:
        self._run("apply", spec)

    def revoke(self, spec: EipSpec) -> None:
        self._run("revoke", spec)

    def _rules(self, host_uuid: str | None = None) -> list[EipSpec]:
        result: list[EipSpec] = self._run("rules", host_uuid)
        return result

    def __getattr__(self, name: str) -> Any:
        # faults, calls, overlaps, bind(): whatever else the wrapped backend offers.
        return getattr(self.backend, name)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class AsyncEipflow:
    """Attach, detach and release EIPs from asyncio code without blocking the event loop.

    Open it inside a running loop with :meth:`open`, or wrap an existing :class:`~eipflow.Eipflow`
    (whose backend must then be sync, or already a :class:`SyncBackendBridge`). Each method has the
    signature, errors and idempotency of its sync twin and runs it in a worker thread.

    Example::

        async with await AsyncEipflow.open("sqlite:///eip.db", backend) as flow:
            eip = await flow.create_eip("203.0.113.10")
            await flow.attach(eip.uuid, nic="nic-1", guest_ip="10.0.0.5", vm="vm-1", host="h1", op_id="req-42")

    Args:
        flow: the sync engine every call is delegated to (available as :attr:`sync`).
        max_workers: size of a thread pool owned by this object (closed by :meth:`close`); ``None``
            uses the loop's default executor, as :func:`asyncio.to_thread` does. Each call in
            flight holds one thread while it waits for the backend, so this bounds concurrency.
    """

    def __init__(self, flow: Eipflow, *, max_workers: int | None = None) -> None:
        if is_async_backend(flow.backend):
            raise TypeError("the engine's backend is async: open with AsyncEipflow.open(), which bridges it")
        self.sync = flow
        self._executor = (
            ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="eipflow-aio") if max_workers else None
        )

    @classmethod
    async def open(
        cls,
        url: str | None = None,
        backend: object = None,
        *,
        max_workers: int | None = None,
        **kwargs: Any,
    ) -> AsyncEipflow:
        """Open the engine in a worker thread (schema creation touches the database).

        Args:
            url: a SQLAlchemy URL, as for :meth:`Eipflow.open`.
            backend: a sync or async backend, an import path, or ``None``; an async backend's
                coroutines will run on the loop that awaits this call.
            max_workers: see the class docstring.
            **kwargs: passed on to :meth:`Eipflow.open` (``lease_seconds``, ``retry``, ``owner``, …).
        """
        chosen: Backend | str | None
        if backend is None or isinstance(backend, str):
            chosen = backend
        elif is_async_backend(backend):
            chosen = SyncBackendBridge(backend, asyncio.get_running_loop())
        elif isinstance(backend, Backend):
            chosen = backend
        else:
            raise TypeError(f"{type(backend).__name__} has no apply()/revoke() methods: not a backend")
        flow = await asyncio.to_thread(Eipflow.open, url, chosen, **kwargs)
        return cls(flow, max_workers=max_workers)

    async def _call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        if self._executor is None:
            return await asyncio.to_thread(fn, *args, **kwargs)
        # Like to_thread: carry the caller's contextvars (structlog's bound context) into the thread.
        ctx = contextvars.copy_context()
        call = functools.partial(ctx.run, fn, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    async def close(self) -> None:
        """Dispose of the database connections and the owned thread pool (waits for calls in flight)."""
        await asyncio.to_thread(self.sync.close)
        if self._executor is not None:
            await asyncio.to_thread(self._executor.shutdown, True)

    async def __aenter__(self) -> AsyncEipflow:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def url(self) -> str:
        """The database URL, without its password."""
        return self.sync.url

    @property
    def backend(self) -> Backend:
        """The backend the engine calls (a :class:`SyncBackendBridge` around an async one)."""
        return self.sync.backend

    # -- EIPs ----------------------------------------------------------------------------------
    async def create_eip(self, vip: str, name: str | None = None, *, op_id: str | None = None) -> Eip:
        """See :meth:`Eipflow.create_eip`."""
        return await self._call(self.sync.create_eip, vip, name, op_id=op_id)

    async def get_eip(self, uuid: str) -> Eip:
        """See :meth:`Eipflow.get_eip`."""
        return await self._call(self.sync.get_eip, uuid)

    async def list_eips(self, *, state: str | None = None, vm_uuid: str | None = None) -> list[Eip]:
        """See :meth:`Eipflow.list_eips`."""
        return await self._call(self.sync.list_eips, state=state, vm_uuid=vm_uuid)

    async def history(self, uuid: str) -> list[TransitionRecord]:
        """See :meth:`Eipflow.history`."""
        return await self._call(self.sync.history, uuid)

    async def delete_eip(self, uuid: str, *, op_id: str | None = None, wait: bool = True) -> Eip:
        """See :meth:`Eipflow.delete_eip`."""
        return await self._call(self.sync.delete_eip, uuid, op_id=op_id, wait=wait)

    # -- attach / detach -----------------------------------------------------------------------
    async def attach(
        self,
        uuid: str,
        *,
        nic: str,
        guest_ip: str,
        vm: str,
        host: str,
        op_id: str | None = None,
        wait: bool = True,
    ) -> Eip:
        """See :meth:`Eipflow.attach` (raises :class:`~eipflow.AttachFailed` the same way)."""
        return await self._call(
            self.sync.attach, uuid, nic=nic, guest_ip=guest_ip, vm=vm, host=host, op_id=op_id, wait=wait
        )

    async def detach(self, uuid: str, *, op_id: str | None = None, wait: bool = True) -> Eip:
        """See :meth:`Eipflow.detach`."""
        return await self._call(self.sync.detach, uuid, op_id=op_id, wait=wait)

    # -- VM facts ------------------------------------------------------------------------------
    async def vm_stopped(self, vm: str, *, op_id: str | None = None, wait: bool = True) -> list[Eip]:
        """See :meth:`Eipflow.vm_stopped`."""
        return await self._call(self.sync.vm_stopped, vm, op_id=op_id, wait=wait)

    async def vm_started(self, vm: str, host: str, *, op_id: str | None = None, wait: bool = True) -> list[Eip]:
        """See :meth:`Eipflow.vm_started`."""
        return await self._call(self.sync.vm_started, vm, host, op_id=op_id, wait=wait)

    async def vm_migrated(self, vm: str, to_host: str, *, op_id: str | None = None, wait: bool = True) -> list[Eip]:
        """See :meth:`Eipflow.vm_migrated`."""
        return await self._call(self.sync.vm_migrated, vm, to_host, op_id=op_id, wait=wait)

    async def vm(self, vm: str) -> Vm | None:
        """See :meth:`Eipflow.vm`."""
        return await self._call(self.sync.vm, vm)

    # -- work, dataplane -----------------------------------------------------------------------
    async def run_due(self, *, limit: int | None = None) -> int:
        """See :meth:`Eipflow.run_due`."""
        return await self._call(self.sync.run_due, limit=limit)

    async def work_items(
        self, *, statuses: Sequence[str] | None = None, eip_uuid: str | None = None
    ) -> list[WorkItem]:
        """See :meth:`Eipflow.work_items`."""
        return await self._call(self.sync.work_items, statuses=statuses, eip_uuid=eip_uuid)

    async def retry_work(self, work_id: int) -> WorkItem:
        """See :meth:`Eipflow.retry_work`."""
        return await self._call(self.sync.retry_work, work_id)

    async def dataplane(self, host: str | None = None) -> list[EipSpec]:
        """See :meth:`Eipflow.dataplane`."""
        return await self._call(self.sync.dataplane, host)

