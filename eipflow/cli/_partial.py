"""Commands that ask every host (``reconcile``, ``dataplane list``) go on when some cannot be reached.

A backend that can answer host by host (:class:`ListsRulesByHost`, e.g. the HTTP agents) is asked
that way; a host whose agent does not answer is reported, and the command exits with
:data:`~eipflow.cli._context.EXIT_PARTIAL` after handling the others.
"""

from __future__ import annotations

import copy
from typing import Protocol, runtime_checkable

from ..api import Eipflow
from ..errors import BackendError
from ..store import Store
from ..values import EipSpec

__all__ = ["ListsRulesByHost", "TolerantRules", "rules_per_host", "tolerant_flow"]


@runtime_checkable
class ListsRulesByHost(Protocol):
    """A backend that reports each host's rules separately, with the error of each host it could not ask."""

    def rules_by_host(self, host_uuid: str | None = None) -> dict[str, list[EipSpec] | BackendError]: ...


def rules_per_host(flow: Eipflow, host: str | None) -> tuple[list[EipSpec], dict[str, str | None]]:
    """The reachable hosts' rules, and ``{host: None | why it could not be asked}`` (empty: no host notion)."""
    backend = flow.backend
    if not isinstance(backend, ListsRulesByHost):
        return flow.dataplane(host), {}
    rules: list[EipSpec] = []
    hosts: dict[str, str | None] = {}
    for name, got in backend.rules_by_host(host).items():
        if isinstance(got, BackendError):
            hosts[name] = str(got)
        else:
            rules.extend(got)
            hosts[name] = None
    return rules, hosts


class TolerantRules:
    """The backend's rules as the reconciler should judge them when some agents cannot be reached.

    A host that answered is judged by what it said. For a host that did not, nothing is known, so
    nothing may be repaired there: it is reported as holding exactly what the database says is
    attached on it (no stray rule to revoke, no missing rule to re-apply). Its in-flight work is
    still re-driven, and fails and retries as durable work does.
    """

    def __init__(self, backend: ListsRulesByHost, store: Store) -> None:
        self.backend = backend
        self.store = store
        self.unreachable: dict[str, str] = {}
        self.asked: list[str] = []

    def rules(self, host_uuid: str | None = None) -> list[EipSpec]:
        out: list[EipSpec] = []
        for host, got in self.backend.rules_by_host(host_uuid).items():
            self.asked.append(host)
            if isinstance(got, BackendError):
                self.unreachable[host] = str(got)
                out.extend(self._believed(host))
            else:
                out.extend(got)
        return out

    def _believed(self, host: str) -> list[EipSpec]:
        return [
            EipSpec(e.uuid, e.vip, e.vm_nic_uuid or "", e.guest_ip or "", host)
            for e in self.store.eips(host_uuid=host, state="attached")
            if e.applied_host == host
        ]


def tolerant_flow(flow: Eipflow) -> tuple[Eipflow, TolerantRules | None]:
    """``flow`` as the reconciler should see it: the same store and runner, rules read host by host."""
    if not isinstance(flow.backend, ListsRulesByHost):
        return flow, None
    view = TolerantRules(flow.backend, flow.store)
    shallow = copy.copy(flow)  # shares the store and the runner (which keeps the real backend for repairs)
    shallow.backend = view  # type: ignore[assignment]
    return shallow, view
