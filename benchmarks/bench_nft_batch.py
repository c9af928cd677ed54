"""(7) The nftables backend: N changes as N single calls vs one batch (root, ``ip``, ``nft``).

In a throwaway network namespace (``eipflow.agent.lab``), each round applies N EIPs and revokes them
again, once as N ``apply``/``revoke`` calls and once as one ``apply_changes`` of each; rounds alternate the
variants and the median is reported with the processes each variant started (counted at the backend's
command runner). ``--announce none`` leaves out the VIP addresses (the nft part alone).
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from _common import machine, median

from eipflow.agent.lab import Lab, missing_requirements
from eipflow.backends.batch import Change, run_changes
from eipflow.backends.nftables import NftablesBackend
from eipflow.values import EipSpec

HOST = "bench-host"


def _specs(n: int, generation: int) -> list[EipSpec]:
    out = []
    for i in range(n):
        hi, lo = divmod(i, 250)
        out.append(EipSpec(str(uuid.UUID(int=i + 1)), f"203.0.{100 + hi}.{lo + 1}", f"nic-{i}",
                           f"10.0.{hi}.{lo + 1}", HOST, generation))
    return out


def _counting(backend: NftablesBackend) -> list[int]:
    spawned = [0]
    real = backend._run

    def run(argv: Sequence[str], stdin: str | None = None) -> Any:
        spawned[0] += 1
        return real(argv, stdin)

    backend._run = run  # type: ignore[method-assign]
    return spawned


def _single(backend: NftablesBackend, specs: list[EipSpec], revoke: list[EipSpec]) -> None:
    for s in specs:
        backend.apply(s)
    for s in revoke:
        backend.revoke(s)


def _batch(backend: NftablesBackend, specs: list[EipSpec], revoke: list[EipSpec]) -> None:
    for action, batch in (("apply", specs), ("revoke", revoke)):
        results = run_changes(backend, HOST, [Change(action, s) for s in batch])
        assert all(r.ok for r in results), [r for r in results if not r.ok][:3]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=500, help="EIPs per round (default 500)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--announce", choices=("address", "none"), default="address")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    why = missing_requirements()
    if why is not None:
        print(f"bench_nft_batch: {why}")
        return 2
    times: dict[str, list[float]] = {"single": [], "batch": []}
    spawns: dict[str, int] = {}
    with Lab() as lab:
        ns = lab.netns("bench")
        lab.veth(ns, "pub0", ns, "pub0p")
        backend = NftablesBackend(HOST, public_interface="pub0" if args.announce == "address" else None,
                                  announce=args.announce, namespace=ns)
        spawned = _counting(backend)
        variants: dict[str, Callable[[NftablesBackend, list[EipSpec], list[EipSpec]], None]] = {
            "single": _single, "batch": _batch}
        generation = 1
        for _ in range(args.rounds):
            for name, variant in variants.items():
                specs, revoke = _specs(args.changes, generation), _specs(args.changes, generation + 1)
                generation += 2
                before = spawned[0]
                started = time.perf_counter()
                variant(backend, specs, revoke)
                times[name].append(time.perf_counter() - started)
                spawns[name] = spawned[0] - before
                assert backend.rules() == []
    single, batch = median(times["single"]), median(times["batch"])
    print(f"# {machine()}")
    print(f"{args.changes} applies + {args.changes} revokes, announce={args.announce}, median of {args.rounds}")
    print(f"  single calls: {single:8.3f} s  {spawns['single']:6d} processes")
    print(f"  one batch:    {batch:8.3f} s  {spawns['batch']:6d} processes   ({single / batch:.1f}x faster)")
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"changes": args.changes, "announce": args.announce, "seconds": times, "spawns": spawns}, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
