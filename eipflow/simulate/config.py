"""The run's options and its deterministic schedule: request *i* is a function of the seed and *i* only."""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Final

from ..backends.base import Backend
from ..errors import InvalidInput

OPS: Final = ("attach", "detach", "stop", "start", "migrate", "delete")
DEFAULT_MIX: Final[Mapping[str, float]] = {
    "attach": 5, "detach": 2, "stop": 1, "start": 1, "migrate": 1, "delete": 0.5,
}
#: guest IPs per VM NIC: few enough that two attaches sometimes pick the same one (GuestIpInUse)
IPS_PER_VM: Final = 4
_VIP_BASE: Final = int(ipaddress.IPv4Address("100.64.0.0"))
_GUEST_BASE: Final = int(ipaddress.IPv4Address("10.0.0.0"))


# -- configuration --------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Latency:
    """Backend latency distribution, in seconds: ``fixed``, ``uniform`` (low, high) or ``exp`` (mean)."""

    kind: str = "fixed"
    a: float = 0.0
    b: float = 0.0

    @classmethod
    def parse(cls, text: str) -> Latency:
        """``0``, ``fixed:2``, ``uniform:1,5`` or ``exp:2`` — milliseconds."""
        kind, _, args = text.strip().partition(":")
        if not args:
            kind, args = "fixed", kind
        try:
            nums = [float(x) / 1000 for x in args.split(",")]
        except ValueError:
            raise InvalidInput(f"latency {text!r}: expected fixed:MS, uniform:LOW,HIGH or exp:MEAN") from None
        if any(n < 0 for n in nums):
            raise InvalidInput(f"latency {text!r}: milliseconds must not be negative")
        if kind == "fixed" and len(nums) == 1:
            return cls("fixed", nums[0])
        if kind == "uniform" and len(nums) == 2 and nums[0] <= nums[1]:
            return cls("uniform", nums[0], nums[1])
        if kind == "exp" and len(nums) == 1:
            return cls("exp", nums[0])
        raise InvalidInput(f"latency {text!r}: expected fixed:MS, uniform:LOW,HIGH or exp:MEAN")

    def sample(self, rng: random.Random) -> float:
        if self.kind == "uniform":
            return rng.uniform(self.a, self.b)
        if self.kind == "exp":
            return rng.expovariate(1 / self.a) if self.a > 0 else 0.0
        return self.a


def parse_mix(text: str) -> dict[str, float]:
    """``attach=4,detach=2,…`` → weights; unnamed operations keep weight 0."""
    mix = dict.fromkeys(OPS, 0.0)
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, weight = part.partition("=")
        if not sep or name.strip() not in mix:
            raise InvalidInput(f"mix {part!r}: expected NAME=WEIGHT with NAME one of {', '.join(OPS)}")
        try:
            mix[name.strip()] = float(weight)
        except ValueError:
            raise InvalidInput(f"mix {part!r}: weight is not a number") from None
        if mix[name.strip()] < 0:
            raise InvalidInput(f"mix {part!r}: weight must not be negative")
    if sum(mix.values()) <= 0:
        raise InvalidInput("mix: at least one weight must be positive")
    return mix


@dataclass(frozen=True)
class SimConfig:
    """One simulation run. ``ops`` or ``duration_s`` bounds the actors' phase (``ops`` wins if both)."""

    db_url: str | None = None  # None: a temporary SQLite file, removed when the run passes
    eips: int = 200
    vms: int = 50
    hosts: int = 4
    workers: int = 4
    processes: int = 0  # 0: the actors are threads of this process (in-memory dataplane)
    ops: int | None = 2000
    duration_s: float | None = None
    mix: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_MIX))
    latency: Latency = field(default_factory=Latency)
    failure_rate: float = 0.0
    timeout_rate: float = 0.0
    seed: int = 0
    quiesce_timeout_s: float = 120.0
    #: wraps the base dataplane before the chaos layer (tests inject a broken backend here); must be
    #: picklable (a module-level callable) when ``processes`` > 0
    backend_wrapper: Callable[[Backend], Backend] | None = None

    def validate(self) -> None:
        if self.eips < 1 or self.vms < 1 or self.hosts < 1 or self.workers < 1 or self.processes < 0:
            raise InvalidInput("simulate: --eips, --vms, --hosts and --workers must be at least 1")
        if self.ops is None and self.duration_s is None:
            raise InvalidInput("simulate: give --ops or --duration")
        if not 0 <= self.failure_rate + self.timeout_rate <= 1 or min(self.failure_rate, self.timeout_rate) < 0:
            raise InvalidInput("simulate: failure and timeout rates are fractions in [0, 1] that sum to ≤ 1")
        if self.eips > 4_000_000 or self.vms * IPS_PER_VM > 16_000_000:
            raise InvalidInput("simulate: too many EIPs or VMs for the simulated address ranges")


# -- the schedule ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Op:
    """One request of the schedule."""

    index: int
    kind: str
    slot: int  # EIP slot (attach, detach, delete)
    vm: int  # VM index (attach, stop, start, migrate)
    host: int  # host index (start, migrate; the attach's host hint)
    ip: int  # which of the VM's guest IPs an attach uses


def op_at(config: SimConfig, index: int) -> Op:
    """Request ``index`` of the schedule: a function of the seed and the index only."""
    rng = random.Random(f"{config.seed}:{index}")
    kinds = [k for k in OPS if config.mix.get(k, 0) > 0]
    kind = rng.choices(kinds, weights=[config.mix[k] for k in kinds])[0]
    return Op(index, kind, rng.randrange(config.eips), rng.randrange(config.vms), rng.randrange(config.hosts),
              rng.randrange(IPS_PER_VM))


def vip_of(slot: int) -> str:
    return str(ipaddress.IPv4Address(_VIP_BASE + slot))


def guest_ip_of(vm: int, k: int) -> str:
    return str(ipaddress.IPv4Address(_GUEST_BASE + vm * IPS_PER_VM + k + 1))


def home_host(config: SimConfig, vm: int) -> str:
    return f"host-{vm % config.hosts}"
