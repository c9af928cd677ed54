"""(4) The peer: django-fsm-2's ``ConcurrentTransitionMixin`` vs eipflow, same SQLite settings, same run.

The peer does the same transition — read the row, check the transition is legal, save with a
state-checked ``UPDATE … WHERE id = ? AND state = ?`` — inside ``transaction.atomic()`` on SQLite WAL
with ``BEGIN IMMEDIATE`` and the same ``synchronous`` level. It writes no history and checks no version;
eipflow (``Runner.fire``: read, legality from the compiled machine, version-checked UPDATE + history
INSERT) does both. Target: eipflow at least 3 times the peer.

The raw driver's transition (``bench_transition``'s ``raw``: UPDATE + history INSERT + COMMIT, versions
tracked in memory, no read) is measured in the same run too: ``raw / peer`` is the most any implementation
that commits each transition durably can reach at that ``synchronous`` level.

The peer is not a project dependency: ``pip install django django-fsm-2`` into the benchmark venv.
Run: ``python benchmarks/bench_peer_django.py [--seconds 2] [--workers 1,4,16] [--rounds 3]``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

sys.path.insert(0, os.path.dirname(__file__))
from _common import Target, bulk_load, machine, median, open_flow, partition, run_threads, uuids, workdir
from bench_transition import maker, quiet_logging

ROWS = 10_000


def django_setup(path: str, synchronous: str) -> Any:
    import django
    from django.conf import settings

    settings.configure(
        DATABASES={"default": {
            "ENGINE": "django.db.backends.sqlite3", "NAME": path,
            "OPTIONS": {"timeout": 30, "transaction_mode": "IMMEDIATE",
                        "init_command": f"PRAGMA journal_mode=WAL; PRAGMA synchronous={synchronous};"},
        }},
        INSTALLED_APPS=[], USE_TZ=True, DEFAULT_AUTO_FIELD="django.db.models.AutoField",
    )
    django.setup()
    from django.db import connection, models
    from django_fsm import ConcurrentTransitionMixin, FSMField, transition

    class PeerEip(ConcurrentTransitionMixin, models.Model):  # type: ignore[misc]
        uuid = models.CharField(primary_key=True, max_length=36)
        state = FSMField(default="applying")
        desired = models.CharField(max_length=16, default="attached")
        updated_at = models.DateTimeField()

        class Meta:
            app_label = "bench"

        @transition(field=state, source="applying", target="applying")
        def detach(self) -> None:
            self.desired = "detached"

    with connection.schema_editor() as editor:
        editor.create_model(PeerEip)
    now = datetime(2026, 1, 1, tzinfo=UTC)
    PeerEip.objects.bulk_create([PeerEip(uuid=u, updated_at=now) for u in uuids(ROWS)], batch_size=2000)
    return PeerEip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--workers", default="1,4,16")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--synchronous", default="FULL,NORMAL")
    args = parser.parse_args(argv)
    quiet_logging()
    workers_list = [int(w) for w in args.workers.split(",")]
    base = workdir()
    syncs = args.synchronous.split(",")
    # Django is configured once per process: one peer database; its synchronous level is switched per figure.
    peer_model = django_setup(os.path.join(base, "peer.db"), syncs[0])
    from django.db import connection, transaction

    def peer_make(w: int) -> Callable[[int], Callable[[], None]]:
        ids = uuids(ROWS)

        def make(n: int) -> Callable[[], None]:
            mine = partition(ids, w, n)
            pos = [0]
            connection.ensure_connection()
            connection.cursor().execute(f"PRAGMA synchronous={current[0]}")
            now = datetime(2026, 1, 1, tzinfo=UTC)

            def step() -> None:
                u = mine[pos[0] % len(mine)]
                pos[0] += 1
                with transaction.atomic():
                    obj = peer_model.objects.get(pk=u)
                    obj.detach()
                    obj.updated_at = now
                    obj.save()

            return step

        return make

    current = [syncs[0]]
    lines = ["| SQLite WAL | workers | django-fsm-2 /s | eipflow fire /s | raw driver /s | **eipflow / peer** | "
             "raw / peer (ceiling) |", "|---|---|---|---|---|---|---|"]
    for sync in syncs:
        current[0] = sync
        path = os.path.join(base, f"eipflow-{sync}.db")
        t = Target(sync, "sqlite", f"sqlite:///{path}", sync, path)
        flow = open_flow(t)
        bulk_load(flow.store.engine, ROWS, state="applying", bound=True, host="host-1")
        ids = uuids(ROWS)
        for w in workers_list:
            peer, ours, raws = [], [], []
            for _ in range(args.rounds):
                peer.append(run_threads(w, args.seconds, peer_make(w)).rate)
                ours.append(run_threads(w, args.seconds, maker("eipflow fire", t, flow, ids, w, [])).rate)
                opened: list[Any] = []
                raws.append(run_threads(w, args.seconds, maker("raw", t, flow, ids, w, opened)).rate)
                for raw in opened:
                    raw.close()
            p, e, r = median(peer), median(ours), median(raws)
            lines.append(f"| {sync} | {w} | {p:,.0f} | {e:,.0f} | {r:,.0f} | **{e / p:.2f}** | {r / p:.2f} |")
            print(lines[-1], file=sys.stderr)
        flow.close()
    import django

    print(f"machine: {machine()}; Django {django.get_version()}, django-fsm-2 (ConcurrentTransitionMixin)")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
