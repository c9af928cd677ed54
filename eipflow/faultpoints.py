"""Crash points for the crash tests: die with SIGKILL at a named instruction.

The runner calls :func:`crash_point` at a few named places. When the environment
variable ``EIPFLOW_CRASH_AT`` names that place (a comma-separated list is
accepted), the process kills itself with ``SIGKILL`` — no ``finally`` blocks,
no ``atexit``, no rollback: exactly what a power cut or the OOM killer does.
Nothing happens when the variable is unset, which is the production case.

Points:

- ``after_claim``: the work item is leased, nothing else happened.
- ``before_apply`` / ``before_revoke``: the row says the call is due; the backend was not called.
- ``after_apply`` / ``after_revoke``: the backend call succeeded; its completion is not recorded.
- ``before_complete``: a completion transition is planned but not committed
  (``before_complete:apply_ok``, ``before_complete:revoke_ok``, ``before_complete:proceed``… for one).
- ``dbos_step_done`` / ``dbos_step_checkpointed`` (:mod:`eipflow.integrations.dbos`): a DBOS step's eipflow
  operation completed, before / after DBOS checkpointed the step (``dbos_step_done:attach``…).
"""

from __future__ import annotations

import os
import signal
from typing import Final

__all__ = ["CRASH_ENV", "POINTS", "crash_point"]

CRASH_ENV: Final = "EIPFLOW_CRASH_AT"
POINTS: Final = (
    "after_claim", "before_apply", "after_apply", "before_revoke", "after_revoke", "before_complete",
    "dbos_step_done", "dbos_step_checkpointed",
)


def crash_point(name: str, qualifier: str | None = None) -> None:
    """Kill this process with SIGKILL if ``$EIPFLOW_CRASH_AT`` names this point.

    Args:
        name: the point (one of :data:`POINTS`).
        qualifier: narrows the point: ``before_complete`` passes the completion event, so
            ``EIPFLOW_CRASH_AT=before_complete:apply_ok`` crashes only there.
    """
    wanted = os.environ.get(CRASH_ENV)
    if not wanted:
        return
    here = {name} if qualifier is None else {name, f"{name}:{qualifier}"}
    if here.intersection(p.strip() for p in wanted.split(",")):
        os.kill(os.getpid(), signal.SIGKILL)
