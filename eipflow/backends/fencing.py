"""The generation rule every host applies: the one home of eipflow's fencing check.

A lease cannot stop a holder that was paused past its expiry and then carries on; the *storage* must
check a token (Kleppmann's fencing token; Oxide's sled-agent ``GenerationOutdated`` /
``ConfigurationChanged``). For eipflow the storage is the host that holds the NAT rule and the token
is the EIP's generation (:attr:`eipflow.EipSpec.generation`), which only grows for an EIP.

A host keeps one :class:`HostRecord` per EIP: the highest generation it has seen and what that
generation asked for (a rule, or nothing: a *tombstone* left by a revoke). Then, for a call carrying
generation ``g``:

============================================  =====================================================
apply, nothing recorded, or ``g`` > recorded   accepted: realize the spec, record ``g``
apply, ``g`` == recorded, same content         accepted, idempotent (realize again: repairs a half-done call)
apply, ``g`` == recorded, other content        refused: ``changed``
apply, ``g`` == recorded, revoked at ``g``     refused: ``revoked``
apply, ``g`` < recorded                        refused: ``older``
revoke, ``g`` >= recorded (or none recorded)   accepted: remove the EIP's rule, tombstone at ``g``
revoke, ``g`` < recorded, a rule is held       refused: ``newer_rule`` (a revoke never removes a newer rule)
revoke, ``g`` < recorded, a tombstone          refused: ``older`` (a replayed old revoke)
============================================  =====================================================

A refused call changes nothing and raises :class:`~eipflow.StaleGeneration` (never retried: the call was
superseded). A record is never lowered. Adapters store records however suits them (a dict, a table, a
file per EIP) and call :func:`decide` under their own per-EIP (or per-host) lock.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import StaleGeneration
from ..values import EipSpec

__all__ = ["Decision", "HostRecord", "decide", "record_after"]


@dataclass(frozen=True, slots=True)
class HostRecord:
    """What a host remembers of one EIP: the newest generation seen and what it asked for.

    Attributes:
        generation: the highest generation the host has seen for the EIP.
        spec: the spec that generation applied, or ``None`` when it was a revoke (a tombstone).
    """

    generation: int
    spec: EipSpec | None

    @property
    def revoked(self) -> bool:
        return self.spec is None


@dataclass(frozen=True, slots=True)
class Decision:
    """What a host does with one call: realize (``apply``), remove (``revoke``), or nothing new (``same``)."""

    action: str  # "apply" | "revoke"
    same: bool  # an idempotent repeat of what is recorded


def decide(record: HostRecord | None, action: str, spec: EipSpec) -> Decision:
    """Judge one call against the host's record of the EIP.

    Raises:
        StaleGeneration: the call is older than what the host has seen (nothing may change).
    """
    g = spec.generation
    if action == "apply":
        if record is None or g > record.generation:
            return Decision("apply", same=False)
        if g < record.generation:
            raise StaleGeneration(spec.eip_uuid, spec.host_uuid, g, record.generation, "older")
        if record.spec is None:
            raise StaleGeneration(spec.eip_uuid, spec.host_uuid, g, record.generation, "revoked")
        if not record.spec.same_content(spec):
            raise StaleGeneration(spec.eip_uuid, spec.host_uuid, g, record.generation, "changed")
        return Decision("apply", same=True)
    if action != "revoke":
        raise ValueError(f"action must be 'apply' or 'revoke', not {action!r}")
    if record is None or g >= record.generation:
        return Decision("revoke", same=record is not None and record.revoked and g == record.generation)
    reason = "older" if record.revoked else "newer_rule"
    raise StaleGeneration(spec.eip_uuid, spec.host_uuid, g, record.generation, reason)


def record_after(record: HostRecord | None, decision: Decision, spec: EipSpec) -> HostRecord:
    """The record once an accepted call is done (never lower than before)."""
    if decision.action == "apply":
        return HostRecord(spec.generation, spec)
    floor = record.generation if record is not None else spec.generation
    return HostRecord(max(floor, spec.generation), None)
