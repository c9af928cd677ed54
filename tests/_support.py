"""Helpers shared by the race tests."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


class Call(threading.Thread):
    """Run a call in a thread and keep its outcome (result or exception)."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        super().__init__(daemon=True)
        self.fn = fn
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self.fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            self.error = exc

    def outcome(self) -> Any:
        """The call's result, re-raising its exception; fails the test if it never finished."""
        self.join(timeout=60)
        assert not self.is_alive(), "call did not finish"
        if self.error is not None:
            raise self.error
        return self.result
