"""The ``eipflow`` command line (Click). ``main(argv)`` is the entry point and the test surface.

Subcommands are imported when they are run (:class:`_LazyGroup`), so ``eipflow eip list`` loads the
store and nothing else: no Alembic, rich, asyncio face, diagrams or integrations.

Shell completion is Click's: ``eval "$(_EIPFLOW_COMPLETE=bash_source eipflow)"`` (``zsh_source``,
``fish_source`` for the other shells).
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from collections.abc import Sequence

import click

from ..errors import AttachFailed, ConflictError, EipflowError, InvalidInput, NotFound
from ._context import EXIT_PARTIAL, State, add_json_option, pass_state, restore_logging, safe_text, setup_logging

__all__ = ["EXIT_CODES", "EXIT_PARTIAL", "cli", "main"]

#: exit codes by error family (documented in docs/errors.md); 1 for any other eipflow error (database,
#: backend), 6 (:data:`EXIT_PARTIAL`) when some hosts were handled and others could not be reached
EXIT_CODES: dict[type[EipflowError], int] = {
    InvalidInput: 2,
    NotFound: 3,
    ConflictError: 4,
    AttachFailed: 5,
}

#: command name -> "module:attribute" inside this package, imported only when the command runs
COMMANDS: dict[str, str] = {
    "agent": "agent:agent_command",
    "attach": "flows:attach",
    "dataplane": "flows:dataplane_group",
    "db": "db:db_group",
    "demo": "demo:demo",
    "detach": "flows:detach",
    "diagram": "diagram:diagram",
    "eip": "eips:eip_group",
    "host": "flows:host_group",
    "prune": "prune:prune",
    "reconcile": "work:reconcile",
    "simulate": "simulate:simulate",
    "vm": "flows:vm_group",
    "work": "work:work_group",
    "worker": "work:worker",
}

#: one-line help per command, so ``eipflow --help`` and shell completion import nothing
SUMMARIES: dict[str, str] = {
    "agent": "Serve one host's nftables dataplane over HTTP.",
    "attach": "Attach an EIP to a VM NIC's guest IP.",
    "dataplane": "Inspect the backend's rules.",
    "db": "Manage the database schema (Alembic migrations).",
    "demo": "Replay the seed's race on a temporary database.",
    "detach": "Detach an EIP.",
    "diagram": "Draw the EIP lifecycle.",
    "eip": "Manage EIPs.",
    "host": "Tell eipflow a host is down (release all its EIPs).",
    "prune": "Remove finished work and old history.",
    "reconcile": "Re-drive stuck work and repair dataplane drift.",
    "simulate": "Chaos run ending in an invariant check.",
    "vm": "Tell eipflow what happened to a VM.",
    "work": "Inspect and retry durable work items.",
    "worker": "Run backend work (metrics, health, periodic prune).",
}


class _LazyGroup(click.Group):
    """A group whose commands are imported on first use (Click's documented lazy-loading pattern)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, _, attr = target.partition(":")
        command: click.Command = getattr(importlib.import_module(f".{module}", __name__), attr)
        add_json_option(command)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, SUMMARIES.get(name, "")) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def _db_option(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not value.strip():
        raise click.BadParameter("is empty; give a database URL (or leave --db out for $EIPFLOW_DB or the default "
                                 "sqlite:///eipflow.db)")
    if value is None and "EIPFLOW_DB" in os.environ and not os.environ["EIPFLOW_DB"].strip():
        raise click.BadParameter("EIPFLOW_DB is set but empty; unset it or give a database URL", param=param)
    return value


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--db", "db_url", envvar="EIPFLOW_DB", callback=_db_option,
              help="SQLAlchemy URL [env EIPFLOW_DB; default sqlite:///eipflow.db]")
@click.option(
    "--backend", envvar="EIPFLOW_BACKEND", help="backend factory 'package.module:factory' [env EIPFLOW_BACKEND]"
)
@click.option("--json", "as_json", is_flag=True,
              help="print exactly one JSON document on stdout (errors too); also accepted after the command")
@click.option("-v", "--verbose", count=True, help="log transitions (-v) and work claims (-vv) to stderr")
@click.option("--log-format", type=click.Choice(["auto", "console", "json"]), default="auto", show_default=True)
@click.option("--retry-attempts", type=click.IntRange(min=1), envvar="EIPFLOW_RETRY_ATTEMPTS", default=None,
              help="backend attempts before a work item is parked [env EIPFLOW_RETRY_ATTEMPTS; default 8]")
@click.option("--retry-backoff", type=click.FloatRange(min=0), envvar="EIPFLOW_RETRY_BACKOFF", default=None,
              help="seconds before the first retry, doubling per attempt [env EIPFLOW_RETRY_BACKOFF; default 1]")
@click.option("--retry-max-backoff", type=click.FloatRange(min=0), envvar="EIPFLOW_RETRY_MAX_BACKOFF", default=None,
              help="longest wait between retries [env EIPFLOW_RETRY_MAX_BACKOFF; default 300]")
@click.version_option(package_name="eipflow")
@click.pass_context
def cli(
    ctx: click.Context, db_url: str | None, backend: str | None, as_json: bool, verbose: int, log_format: str,
    retry_attempts: int | None, retry_backoff: float | None, retry_max_backoff: float | None,
) -> None:
    """Attach Elastic IPs safely: persisted, version-checked state machines."""
    setup_logging(verbose, log_format)
    retry = {k: v for k, v in (("max_attempts", retry_attempts), ("base_delay_s", retry_backoff),
                               ("max_delay_s", retry_max_backoff)) if v is not None}
    ctx.obj = State(db_url=db_url, backend=backend, as_json=as_json, verbose=verbose, retry=retry)
    ctx.call_on_close(ctx.obj.close)


def _wants_json(argv: Sequence[str]) -> bool:
    for arg in argv:
        if arg == "--":
            return False
        if arg == "--json":
            return True
    return False


def _fail(as_json: bool, kind: str, message: str, code: int) -> int:
    if as_json:
        click.echo(json.dumps({"error": {"type": kind, "message": message, "exit_code": code}}, sort_keys=True))
    else:
        click.echo(safe_text(f"error: {message}"), err=True)  # stored or remote text: never raw on a terminal
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code.

    On failure: one line ``error: …`` on stderr, or with ``--json`` one document
    ``{"error": {"type", "message", "exit_code"}}`` on stdout; the exit code is the same either way.
    """
    args = list(argv) if argv is not None else sys.argv[1:]
    as_json = _wants_json(args)
    try:
        # Without standalone mode, click returns (not raises) the code a command passed to ctx.exit().
        code = cli.main(args=args, prog_name="eipflow", standalone_mode=False)
        if isinstance(code, int) and not isinstance(code, bool):
            return code
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.Abort:
        return _fail(as_json, "Aborted", "aborted", 130)
    except click.ClickException as exc:
        if not as_json:
            exc.show()
            return int(exc.exit_code)
        return _fail(True, type(exc).__name__, exc.format_message(), int(exc.exit_code))
    except EipflowError as exc:
        code = next((c for family, c in EXIT_CODES.items() if isinstance(exc, family)), 1)
        return _fail(as_json, type(exc).__name__, str(exc), code)
    finally:
        restore_logging()
    return 0


def entry() -> None:  # pragma: no cover - the console script
    sys.exit(main())


__all__ += ["State", "entry", "pass_state"]
