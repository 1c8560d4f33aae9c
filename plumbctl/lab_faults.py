"""`plumbctl lab restart|partition|heal`: the lab's fault verbs, thin shells over `lab.faults`,
so that anyone can replay the reliability scenarios by hand (docs/reliability.md).

Each takes `--name` like the other lab verbs; progress goes to stderr, one result line to
stdout; exit 0 on success, 1 with one `Error: ...` line on failure, 2 on a usage error.
"""

from __future__ import annotations

import os

import click

from lab import faults
from lab.host import HostError
from lab.layout import DEFAULT_NAME, LabLayout, LabSpecError
from lab.ovs_sandbox import OvsSandboxError

name_option = click.option(
    "--name", default=DEFAULT_NAME, show_default=True, help="The lab's name (several may run)."
)
_FAILURES = (faults.FaultError, HostError, OvsSandboxError, RuntimeError, OSError)


def _layout(name: str) -> LabLayout:
    if os.geteuid() != 0:
        raise click.ClickException("the lab needs root (network namespaces, Open vSwitch)")
    try:
        return LabLayout(name)
    except LabSpecError as exc:
        raise click.BadParameter(str(exc), param_hint="--name") from exc


@click.command()
@name_option
@click.argument("node")
@click.option(
    "--component",
    type=click.Choice(faults.COMPONENTS),
    default="agent",
    show_default=True,
    help="What to restart on the node.",
)
@click.option("--kill", is_flag=True, help="SIGKILL (a crash) instead of SIGTERM.")
def restart(name: str, node: str, component: str, kill: bool) -> None:
    """Restart NODE's agent, ovs-vswitchd or ovsdb-server and wait until it answers again."""
    layout = _layout(name)
    try:
        done = faults.restart(layout, node, component, hard=kill)
    except _FAILURES as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(
        f"{done.node}: {done.component} restarted ({done.signal}, pid {done.old_pid} -> "
        f"{done.new_pid}), away {done.away_s:.2f}s"
    )


@click.command()
@name_option
@click.argument("node")
def partition(name: str, node: str) -> None:
    """Cut NODE's underlay link (its uplink loses carrier); `heal` restores it."""
    layout = _layout(name)
    try:
        faults.partition(layout, node)
    except _FAILURES as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{node}: underlay link cut")


@click.command()
@name_option
@click.argument("node")
def heal(name: str, node: str) -> None:
    """Restore NODE's underlay link after `partition`."""
    layout = _layout(name)
    try:
        faults.heal(layout, node)
    except _FAILURES as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{node}: underlay link restored")
