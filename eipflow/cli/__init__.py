"""The ``eipflow`` command line (Click). ``main(argv)`` is the entry point and the test surface."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import click

from ..errors import AttachFailed, ConflictError, EipflowError, InvalidInput, NotFound
from . import agent, db, demo, diagram, eips, flows, simulate, work
from ._context import EXIT_PARTIAL, State, pass_state, safe_text, setup_logging

__all__ = ["EXIT_CODES", "EXIT_PARTIAL", "cli", "main"]

#: exit codes by error family (documented in docs/errors.md); 1 for any other eipflow error (database,
#: backend), 6 (:data:`EXIT_PARTIAL`) when some hosts were handled and others could not be reached
EXIT_CODES: dict[type[EipflowError], int] = {
    InvalidInput: 2,
    NotFound: 3,
    ConflictError: 4,
    AttachFailed: 5,
}


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--db", "db_url", envvar="EIPFLOW_DB", help="SQLAlchemy URL [env EIPFLOW_DB; default sqlite:///eipflow.db]"
)
@click.option(
    "--backend", envvar="EIPFLOW_BACKEND", help="backend factory 'package.module:factory' [env EIPFLOW_BACKEND]"
)
@click.option("--json", "as_json", is_flag=True, help="print exactly one JSON document on stdout")
@click.option("-v", "--verbose", count=True, help="log transitions (-v) and work claims (-vv) to stderr")
@click.option("--log-format", type=click.Choice(["auto", "console", "json"]), default="auto", show_default=True)
@click.version_option(package_name="eipflow")
@click.pass_context
def cli(
    ctx: click.Context, db_url: str | None, backend: str | None, as_json: bool, verbose: int, log_format: str
) -> None:
    """Attach Elastic IPs safely: persisted, version-checked state machines."""
    setup_logging(verbose, log_format)
    ctx.obj = State(db_url=db_url, backend=backend, as_json=as_json, verbose=verbose)
    ctx.call_on_close(ctx.obj.close)


for module in (eips, flows, demo, diagram, work, db, simulate, agent):
    module.register(cli)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 on success, non-zero with one line on stderr otherwise)."""
    try:
        # Without standalone mode, click returns (not raises) the code a command passed to ctx.exit().
        code = cli.main(args=list(argv) if argv is not None else None, prog_name="eipflow", standalone_mode=False)
        if isinstance(code, int) and not isinstance(code, bool):
            return code
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.Abort:
        click.echo("error: aborted", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return int(exc.exit_code)
    except EipflowError as exc:
        click.echo(safe_text(f"error: {exc}"), err=True)
        for family, code in EXIT_CODES.items():
            if isinstance(exc, family):
                return code
        return 1
    return 0


def entry() -> None:  # pragma: no cover - the console script
    sys.exit(main())


__all__ += ["State", "entry", "pass_state"]
