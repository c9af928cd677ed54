"""eipflow's loggers: structlog when the application configured it, the standard library otherwise.

A library must not decide where its logs go. structlog's defaults print every level to stdout, so
a program that embeds eipflow without configuring structlog would get eipflow's debug lines mixed
into its own output. Each call here therefore checks, at call time, whether the application has
configured structlog (:func:`structlog.is_configured`):

- yes: the event goes through the application's structlog pipeline unchanged (and
  :func:`structlog.testing.capture_logs` sees it);
- no: it goes to the standard library logger of the same name (``eipflow.runner``, …), which has a
  :class:`logging.NullHandler` and so writes nothing until the application configures logging.
  The record's message reads ``event key=value …`` (keys sorted, as structlog's console renderer
  writes them); the structured fields are kept on the record as ``eipflow_event`` for handlers that
  want them (the CLI's does).

structlog is never imported by this module: a process that does not use it (``eipflow eip list``)
does not pay for it (it pulls in rich and asyncio).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["EVENT_ATTR", "Listener", "Logger", "add_listener", "get_logger", "remove_listener"]

#: the attribute of a standard-library record that holds the structured event (``{"event": …, key: value}``)
EVENT_ATTR = "eipflow_event"

logging.getLogger("eipflow").addHandler(logging.NullHandler())

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR,
           "critical": logging.CRITICAL}


#: ``listener(logger_name, level, event, fields)``, called for every event at every level (before filtering)
Listener = Callable[[str, str, str, dict[str, Any]], None]
_listeners: tuple[Listener, ...] = ()


def add_listener(listener: Listener) -> None:
    """Also hand every event to ``listener`` (how :mod:`eipflow.metrics` observes the engine's log points)."""
    global _listeners
    _listeners = (*_listeners, listener)


def remove_listener(listener: Listener) -> None:
    global _listeners
    _listeners = tuple(fn for fn in _listeners if fn is not listener)


def _structlog() -> Any | None:
    module = sys.modules.get("structlog")
    if module is None or not module.is_configured():
        return None
    return module


class Logger:
    """A structlog-style logger (``log.info("work.claimed", work_id=3)``, ``log.bind(...)``)."""

    __slots__ = ("_context", "_name", "_stdlib")

    def __init__(self, name: str, context: dict[str, Any] | None = None) -> None:
        self._name = name
        self._context = context or {}
        self._stdlib = logging.getLogger(name)

    def bind(self, **values: Any) -> Logger:
        """A logger that adds ``values`` to every event."""
        return Logger(self._name, {**self._context, **values})

    def _log(self, method: str, event: str, fields: dict[str, Any]) -> None:
        if _listeners:
            merged = {**self._context, **fields}
            for listener in _listeners:
                try:
                    listener(self._name, method, event, merged)
                except Exception:
                    logging.getLogger(__name__).debug("listener failed", exc_info=True)
        structlog = _structlog()
        if structlog is not None:
            getattr(structlog.get_logger(self._name).bind(**self._context), method)(event, **fields)
            return
        level = _LEVELS[method]
        if not self._stdlib.isEnabledFor(level):
            return
        data = {**self._context, **fields}
        text = " ".join([event, *(f"{k}={v if isinstance(v, str) else repr(v)}" for k, v in sorted(data.items()))])
        self._stdlib.log(level, "%s", text, extra={EVENT_ATTR: {"event": event, **data}}, stacklevel=3)

    def debug(self, event: str, **fields: Any) -> None:
        self._log("debug", event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._log("info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._log("warning", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._log("error", event, fields)

    def critical(self, event: str, **fields: Any) -> None:
        self._log("critical", event, fields)


def get_logger(name: str) -> Logger:
    """The logger for module ``name`` (use ``__name__``)."""
    return Logger(name)
