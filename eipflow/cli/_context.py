"""Shared CLI plumbing: the lazily opened engine, output, logging set-up.

Commands that change something open the full :class:`~eipflow.Eipflow` (:attr:`State.flow`), which
brings the schema up to date first. Read commands open only the store (:meth:`State.reader`) and
never migrate: a fresh SQLite file gets its schema on first use, anything else that is behind says
so and names ``eipflow db upgrade``.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import click

from .._logging import EVENT_ATTR
from ..validation import printable

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from ..api import Eipflow
    from ..runner import RetryPolicy
    from ..store import Store

__all__ = [
    "EXIT_PARTIAL", "State", "add_json_option", "emit", "exit_partial", "pass_state", "restore_logging", "safe_text",
    "set_level", "setup_logging",
]

#: exit code of a command that handled some hosts and could not reach others (``reconcile``, ``dataplane list``)
EXIT_PARTIAL = 6


@dataclass
class State:
    db_url: str | None
    backend: str | None
    as_json: bool
    verbose: int = 0
    #: RetryPolicy fields given on the command line (``--retry-attempts`` …)
    retry: dict[str, Any] = field(default_factory=dict)
    _flow: Eipflow | None = field(default=None, repr=False)
    _store: Store | None = field(default=None, repr=False)

    def retry_policy(self) -> RetryPolicy | None:
        if not self.retry:
            return None
        from ..runner import RetryPolicy

        return RetryPolicy(**self.retry)

    @property
    def flow(self) -> Eipflow:
        """The full engine (schema migrated to head first): for commands that change something."""
        if self._flow is None:
            from ..api import Eipflow

            self._flow = Eipflow.open(self.db_url, self.backend, retry=self.retry_policy())
        return self._flow

    def reader(self) -> Store:
        """The store alone, for read commands: checks the schema revision, never migrates it."""
        if self._store is None:
            from ..store import Store, create_db_engine, resolve_url

            engine = create_db_engine(resolve_url(self.db_url))
            try:
                check_schema(engine)
            except BaseException:
                engine.dispose()
                raise
            self._store = Store(engine)
        return self._store

    def read_flow(self) -> Eipflow:
        """An engine on a checked, unmigrated database (read commands that need the backend)."""
        if self._flow is None:
            from ..api import Eipflow

            store = self.reader()
            self._flow = Eipflow.open(engine=store.engine, backend=self.backend, create_schema=False,
                                      retry=self.retry_policy())
            self._store = None  # the flow owns the engine now
        return self._flow

    def close(self) -> None:
        if self._flow is not None:
            self._flow.close()
            self._flow = None
        if self._store is not None:
            self._store.close()
            self._store = None


def check_schema(engine: Engine) -> None:
    """Refuse a database whose schema is not this eipflow's head (a fresh SQLite file is created).

    Raises:
        DatabaseError: no eipflow schema (server databases), or another revision: run ``eipflow db upgrade``.
    """
    from ..errors import DatabaseError
    from ..store.database import ensure_schema, redacted, schema_revision
    from ..store.migrations import HEAD

    current = schema_revision(engine)
    if current == HEAD:
        return
    url = redacted(engine.url)
    if current is None:
        import sqlalchemy as sa

        with engine.connect().execution_options(eipflow_read=True) as conn:
            empty = not sa.inspect(conn).get_table_names()
        if engine.dialect.name == "sqlite" and empty:
            ensure_schema(engine)  # the embedded default: a new file gets its schema on first use
            return
        raise DatabaseError(url, "no eipflow schema here; create it with: eipflow db upgrade")
    raise DatabaseError(url, f"schema is at revision {current}, this eipflow expects {HEAD}; read commands never "
                             "migrate: run eipflow db upgrade (or use the eipflow that created it)")


pass_state = click.make_pass_decorator(State)


def _set_json(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        state = ctx.find_object(State)
        if state is not None:
            state.as_json = True


def add_json_option(command: click.Command) -> None:
    """Accept ``--json`` after the subcommand too (``eipflow eip list --json``), on every leaf command."""
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            add_json_option(sub)
        return
    if any("--json" in getattr(p, "opts", ()) for p in command.params):
        return
    command.params.append(click.Option(["--json"], is_flag=True, expose_value=False, callback=_set_json,
                                       help="print exactly one JSON document on stdout"))


def emit(state: State, data: Any, text: str | None = None) -> None:
    """One JSON document with ``--json``, else the human text (or a JSON dump if no text is given).

    Stored text (names, errors, details) may hold control characters written before they were
    refused, or sent by a backend: the human text is shown with them escaped, never raw. JSON
    escapes them itself (``\u001b``).
    """
    if state.as_json or text is None:
        click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))
    else:
        click.echo(safe_text(text))


# -- logging -----------------------------------------------------------------------------------

_LOGGER = "eipflow"


class _StderrHandler(logging.Handler):
    """Renders eipflow's events (structured, see :mod:`eipflow._logging`) as JSON or console lines on stderr."""

    def __init__(self, use_json: bool) -> None:
        super().__init__()
        self.use_json = use_json
        self._renderer: Any = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            data = dict(getattr(record, EVENT_ATTR, None) or {"event": record.getMessage()})
            data["log_level"] = record.levelname.lower()
            data["timestamp"] = datetime.fromtimestamp(record.created, UTC).isoformat().replace("+00:00", "Z")
            if self.use_json:
                line = json.dumps(data, default=str)
            else:
                if self._renderer is None:
                    import structlog  # only once something is printed: rich and asyncio come with it

                    self._renderer = structlog.dev.ConsoleRenderer()
                # Log values may carry stored or remote text: never raw on a terminal (JSON escapes itself).
                line = self._renderer(None, data["log_level"], _escape_for_console(None, "", data))
            # Look sys.stderr up per record: a test harness may swap (and close) it between calls.
            sys.stderr.write(line + "\n")
            sys.stderr.flush()
        except Exception:  # noqa: BLE001 - logging must never break a command
            self.handleError(record)


_saved: list[tuple[logging.Logger, int, bool, list[logging.Handler]]] = []


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
    """Only the CLI configures logging; logs always go to stderr (JSON unless stderr is a TTY).

    eipflow logs through the standard library unless structlog is configured; the CLI installs a
    handler on the ``eipflow`` logger. When structlog is already loaded in this process (an
    application calling :func:`main`), it is configured to render the same way.
    """
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    logger = logging.getLogger(_LOGGER)
    if not _saved:
        _saved.append((logger, logger.level, logger.propagate, list(logger.handlers)))
    for handler in [h for h in logger.handlers if isinstance(h, _StderrHandler)]:
        logger.removeHandler(handler)
    logger.addHandler(_StderrHandler(use_json))
    logger.setLevel(level)
    logger.propagate = False
    if "structlog" in sys.modules:
        _configure_structlog(level, use_json)


def _configure_structlog(level: int, use_json: bool) -> None:
    import structlog

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
        logger_factory=lambda *_: structlog.PrintLogger(sys.stderr),
        cache_logger_on_first_use=False,
    )


def _escape_for_console(_logger: Any, _name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """Log values may carry stored or remote text (names, backend errors): never raw on a terminal."""
    return {k: printable(v) if isinstance(v, str) else v for k, v in event_dict.items()}


def set_level(level: int) -> None:
    """Change what the CLI prints (``demo`` and ``simulate`` keep expected warnings quiet)."""
    logging.getLogger(_LOGGER).setLevel(level)
    structlog = sys.modules.get("structlog")
    if structlog is not None and structlog.is_configured():
        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(level))


def restore_logging() -> None:
    """Put the ``eipflow`` standard-library logger back as :func:`setup_logging` found it."""
    if not _saved:
        return
    logger, level, propagate, handlers = _saved.pop()
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    for handler in handlers:
        logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = propagate
