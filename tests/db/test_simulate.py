"""``eipflow simulate``: a seeded chaos run passes its invariant check, and a broken build fails it."""

from __future__ import annotations

import json
from typing import Any

import pytest

from eipflow import Backend, EipSpec
from eipflow.cli import main
from eipflow.simulate import ChaosBackend, Latency, SimConfig, op_at, parse_mix, run


def _size(db_url: str) -> dict[str, Any]:
    # The size on every database (the fast path made the server runs affordable in CI).
    return {"eips": 200, "vms": 40, "ops": 2000}


class SkipsRevoke:
    """A deliberately broken backend: revoke reports success and does nothing (module level: picklable)."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner

    def apply(self, spec: EipSpec) -> None:
        self.inner.apply(spec)

    def revoke(self, spec: EipSpec) -> None:
        return None

    def __getattr__(self, name: str) -> Any:  # rules(), overlaps, bind(): the wrapped dataplane's
        return getattr(self.inner, name)


def test_small_run_passes_the_invariant_check_on_every_database(db_url: str) -> None:
    """200 EIPs, 2,000 requests from concurrent actors, 5% failures, 1% timeouts: the contract holds at quiescence."""
    config = SimConfig(db_url=db_url, hosts=4, workers=4, failure_rate=0.05, timeout_rate=0.01, seed=7,
                       **_size(db_url))
    report = run(config)
    assert report.ok, report.text()
    assert report.ops == config.ops
    # The run really exercised the interesting paths, so a pass means something.
    assert report.backend_calls.get("apply.failed", 0) > 0
    assert report.backend_calls.get("revoke.ok", 0) > 0
    assert report.outcomes.get("attach.ok", 0) > 0
    assert report.outcomes.get("stop.ok", 0) > 0
    assert report.transitions > config.ops // 2
    assert report.attach_latency_ms["n"] > 0


def test_a_backend_that_skips_revokes_fails_the_check(sqlite_url: str) -> None:
    """The checker can fail: revokes that silently do nothing leave rules behind detached/released EIPs."""
    config = SimConfig(db_url=sqlite_url, eips=60, vms=15, ops=400, workers=2, seed=3,
                       backend_wrapper=SkipsRevoke)
    report = run(config)
    assert not report.ok
    rules = {v.rule for v in report.violations}
    assert "dataplane.leaked" in rules
    assert any("dataplane:" in line for line in report.details)  # the EIP, its history and the dataplane


def test_a_run_with_worker_processes_passes(sqlite_url: str) -> None:
    """Two worker processes share the database and the DB-backed dataplane; overlaps are checked across them."""
    config = SimConfig(db_url=sqlite_url, eips=60, vms=15, ops=300, workers=2, processes=2, seed=5,
                       failure_rate=0.05)
    report = run(config)
    assert report.ok, report.text()
    assert report.ops == 300
    assert sum(report.backend_calls.values()) > 0


def test_same_seed_same_schedule() -> None:
    """Request i depends on the seed and i only; another seed gives another schedule."""
    config = SimConfig(seed=11, eips=50, vms=10)
    first = [op_at(config, i) for i in range(200)]
    assert first == [op_at(config, i) for i in range(200)]
    assert first != [op_at(SimConfig(seed=12, eips=50, vms=10), i) for i in range(200)]
    assert {op.kind for op in first} == {"attach", "detach", "stop", "start", "migrate", "delete"}


def test_mix_and_latency_parsing() -> None:
    """Weights by name (unnamed ones are 0); latency distributions in milliseconds; bad input is refused."""
    assert parse_mix("attach=4,stop=1") == {"attach": 4, "detach": 0, "stop": 1, "start": 0, "migrate": 0,
                                            "delete": 0}
    assert Latency.parse("uniform:1,5") == Latency("uniform", 0.001, 0.005)
    assert Latency.parse("2") == Latency("fixed", 0.002)
    config = SimConfig(mix=parse_mix("stop=1"))
    assert {op_at(config, i).kind for i in range(50)} == {"stop"}
    from eipflow import InvalidInput

    for bad in ("attach", "fly=1", "attach=-1", "attach=0"):
        with pytest.raises(InvalidInput):
            parse_mix(bad)
    with pytest.raises(InvalidInput):
        Latency.parse("uniform:5,1")


def test_overlapping_calls_are_reported() -> None:
    """The chaos layer records intervals; two calls of one EIP in flight at once are an overlap."""
    from eipflow.simulate.chaos import _overlapping

    assert _overlapping([("a", 0.0, 1.0), ("a", 1.5, 2.0), ("b", 0.5, 1.2)]) == []
    assert _overlapping([("a", 0.0, 1.0), ("a", 0.9, 2.0), ("b", 0.5, 1.2)]) == ["a"]
    backend = ChaosBackend(_Nop(), latency=Latency(), failure_rate=0.0, timeout_rate=0.0, seed=1)
    backend.apply(EipSpec("e", "198.51.100.1", "nic", "10.0.0.1", "h"))
    assert backend.counts == {"apply.ok": 1} and len(backend.intervals) == 1


class _Nop:
    def apply(self, spec: EipSpec) -> None:
        return None

    def revoke(self, spec: EipSpec) -> None:
        return None


def test_cli_json_report(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """``eipflow simulate --json`` prints one JSON document with the figures; exit 0 when the check passes."""
    url = f"sqlite:///{tmp_path / 'sim.db'}"
    code = main(["simulate", "--db", url, "--eips", "30", "--vms", "8", "--ops", "120", "--workers", "2",
                 "--failure-rate", "0.05", "--latency", "uniform:0,1", "--seed", "1", "--json"])
    out = capsys.readouterr().out
    assert code == 0, out
    data = json.loads(out)
    assert data["ok"] is True and data["ops"] == 120 and data["violations"] == []
    assert {"transitions_per_s", "conflicts", "backend_calls", "attach_latency_ms", "peak_rss_mb"} <= set(data)


def test_cli_refuses_a_database_that_holds_eips(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """A chaos run never lands on a database with real EIPs in it."""
    url = f"sqlite:///{tmp_path / 'real.db'}"
    assert main(["--db", url, "eip", "create", "--vip", "203.0.113.9"]) == 0
    capsys.readouterr()
    assert main(["simulate", "--db", url, "--ops", "10"]) == 2
    assert "empty database" in capsys.readouterr().err
