"""Shared CLI plumbing: the lazily opened engine, output, logging set-up."""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field
from typing import Any

import click
import structlog

from ..api import Eipflow
from ..validation import printable

__all__ = ["EXIT_PARTIAL", "State", "emit", "exit_partial", "pass_state", "safe_text", "setup_logging"]

#: exit code of a command that handled some hosts and could not reach others (``reconcile``, ``dataplane list``)
EXIT_PARTIAL = 6


@dataclass
class State:
    db_url: str | None
    backend: str | None
    as_json: bool
    verbose: int = 0
    _flow: Eipflow | None = field(default=None, repr=False)

    @property
    def flow(self) -> Eipflow:
        if self._flow is None:
            self._flow = Eipflow.open(self.db_url, self.backend)
        return self._flow

    def close(self) -> None:
        if self._flow is not None:
            self._flow.close()
            self._flow = None


pass_state = click.make_pass_decorator(State)


def emit(state: State, data: Any, text: str | None = None) -> None:
    """One JSON document with ``--json``, else the human text (or a JSON dump if no text is given).

    Stored text (names, errors, details) may hold control characters written before they were
    refused, or sent by a backend: the human text is shown with them escaped, never raw. JSON
    escapes them itself (``\u001b``).
    """
    if state.as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))
    elif text is not None:
        click.echo(safe_text(text))
    else:
        click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def exit_partial(unreachable: dict[str, str], asked: int) -> None:
    """One stderr line per host that could not be asked, then exit :data:`EXIT_PARTIAL`."""
    for host, why in sorted(unreachable.items()):
        click.echo(safe_text(f"error: host {host}: {why}"), err=True)
    click.echo(f"error: partial: {len(unreachable)} of {asked} host(s) could not be reached "
               f"({', '.join(sorted(unreachable))}); the others were handled", err=True)
    click.get_current_context().exit(EXIT_PARTIAL)


def safe_text(text: str) -> str:
    """``text`` for a terminal: its lines kept, every control or format character within them escaped."""
    return "\n".join(printable(line) for line in text.split("\n"))


def setup_logging(verbose: int, fmt: str) -> None:
    """Only the CLI configures structlog; logs always go to stderr (JSON unless stderr is a TTY)."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: Any = structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer()
    # JSON escapes control characters itself; the console renderer would print them raw.
    escape: list[Any] = [] if use_json else [_escape_for_console]
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            *escape,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        # Look sys.stderr up per logger, not once: a test harness may swap (and close) it between calls.
        logger_factory=lambda *_: structlog.PrintLogger(sys.stderr),
        cache_logger_on_first_use=False,
    )


def _escape_for_console(_logger: Any, _name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """Log values may carry stored or remote text (names, backend errors): never raw on a terminal."""
    return {k: printable(v) if isinstance(v, str) else v for k, v in event_dict.items()}
