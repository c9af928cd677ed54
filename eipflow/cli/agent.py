"""CLI commands: ``eipflow agent`` — serve one host's dataplane over HTTP."""

from __future__ import annotations

import os

import click

#: test hook: see eipflow.agent.app.create_app(hold_fifo=...)
HOLD_FIFO_ENV = "EIPFLOW_AGENT_HOLD_FIFO"


@click.command("agent")
@click.option("--config", "config_path", envvar="EIPFLOW_HOSTS_FILE", required=True, type=click.Path(dir_okay=False),
              help="hosts file (TOML) [env EIPFLOW_HOSTS_FILE]")
@click.option("--host", "host_uuid", envvar="EIPFLOW_AGENT_HOST", required=True,
              help="which [hosts.\"…\"] entry this agent serves [env EIPFLOW_AGENT_HOST]")
@click.option("--listen", help="bind HOST:PORT or unix:///path.sock instead of the entry's url")
def agent_command(config_path: str, host_uuid: str, listen: str | None) -> None:
    """Serve apply / revoke / list for one host's nftables dataplane (stops cleanly on SIGTERM)."""
    try:
        from ..agent.server import serve
    except ImportError as exc:  # the web stack is an optional extra
        raise click.ClickException(f"the agent needs the 'agent' extra: pip install 'eipflow[agent]' ({exc})") from None
    from ..agent.config import load_hosts

    # Only this host's entry is read: the file need hold no other host's token.
    hosts = load_hosts(config_path, host=host_uuid)
    serve(hosts[host_uuid], listen=listen, hold_fifo=os.environ.get(HOLD_FIFO_ENV) or None)


def register(root: click.Group) -> None:
    """Add this module's commands to the root group."""
    root.add_command(agent_command)
