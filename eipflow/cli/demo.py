"""``eipflow demo``: the seed's race on a fresh temporary SQLite database."""

from __future__ import annotations

import logging

import click

from ..demo import run_demo
from ._context import State, emit, pass_state, set_level
from .eips import history_text, list_text


@click.command("demo")
@click.option("--db", "demo_db", default=None, help="database for the demo (default: a fresh temporary SQLite file)")
@pass_state
def demo(state: State, demo_db: str | None) -> None:
    """Replay the seed's race: attach blocked in the backend while the VM stops (temporary files are removed)."""
    if state.verbose == 0:
        # The demo's second act fails an apply on purpose; its warning would only alarm a newcomer.
        set_level(logging.ERROR)
    result = run_demo(demo_db)
    data = {
        "db_url": result.db_url,
        "steps": result.steps,
        "eips": [e.to_dict() for e in result.eips],
        "history": {k: [r.to_dict() for r in v] for k, v in result.history.items()},
        "dataplane": [r.__repr__() for r in result.rules],
    }
    lines = [f"eipflow demo on {result.db_url}", ""]
    lines += [f"{i}. {s}" for i, s in enumerate(result.steps, 1)]
    for uuid, records in result.history.items():
        lines += ["", f"timeline of {uuid}:", history_text(records)]
    lines += ["", "final database:", list_text(result.eips), "", "final dataplane:"]
    rules = [f"  {r.host_uuid}: {r.vip} -> {r.guest_ip} ({r.eip_uuid})" for r in result.rules]
    lines += rules or ["  no rules (nothing leaked)"]
    emit(state, data, "\n".join(lines))


def register(root: click.Group) -> None:
    root.add_command(demo)
