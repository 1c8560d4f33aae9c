"""`plumbctl`: the operator's command line (click). Each command is a thin shell over the rooms."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

import click

from flows.pipeline import TABLES, pipeline_document
from plumbctl import lab_faults
from plumbctl.inspect import emit, explain, flows, status, trace
from plumbctl.lab import lab
from plumbctl.policy import policy


@click.group()
def cli() -> None:
    """Inspect Plumb's datapath and run labs."""


@cli.command()
@click.option("--install", is_flag=True, help="Start a private OVS, install the skeleton, dump it.")
@click.option("--markdown", is_flag=True, help="Print the pipeline reference as Markdown.")
@click.option("-o", "--output", type=click.Choice(["json", "yaml"]), default=None)
def pipeline(install: bool, markdown: bool, output: str | None) -> None:
    """The pipeline, generated from its declaration (or installed into a private OVS)."""
    if markdown:
        click.echo(pipeline_document(), nl=False)
        return
    if install:
        _install_pipeline()
        return
    tables = [
        {
            "id": t.id,
            "name": t.name,
            "stage": t.spec.stage.value,
            "miss": t.spec.miss.value,
            "doc": t.spec.doc,
        }
        for t in TABLES.values()
    ]
    emit(output, tables, lambda: _print_tables(tables))


def _print_tables(tables: list[dict[str, Any]]) -> None:
    click.echo(f"{'id':>3}  {'table':<26} {'stage':<16} {'miss':<5} what it does")
    for t in tables:
        click.echo(f"{t['id']:>3}  {t['name']:<26} {t['stage']:<16} {t['miss']:<5} {t['doc']}")


def _install_pipeline() -> None:
    from controller.bridge import BridgeSettings, ensure_node_bridge
    from controller.switch import Switch
    from flows.skeleton import skeleton_flows
    from lab.ovs_sandbox import OvsBinariesMissing, OvsSandbox, require_ovs_binaries

    try:
        require_ovs_binaries()
    except OvsBinariesMissing as exc:
        raise click.ClickException(str(exc)) from exc
    with (
        tempfile.TemporaryDirectory(prefix="plumb-pipeline-") as tmp,
        OvsSandbox(Path(tmp) / "ovs") as ovs,
    ):
        settings = BridgeSettings(name="br-int", datapath_type="netdev")
        ensure_node_bridge(ovs.db_remote, settings)
        switch = Switch(ovs.mgmt_socket("br-int"))
        switch.start()
        try:
            switch.wait_connected(10)
            switch.replace_flows("pipeline", skeleton_flows(1))
        finally:
            switch.stop()
        click.echo(f"# ovs-ofctl -O OpenFlow15 --names --no-stats dump-flows br-int ({ovs.rundir})")
        click.echo(
            ovs.ofctl(
                "-O",
                "OpenFlow15",
                "--names",
                "--no-stats",
                "dump-flows",
                str(ovs.mgmt_socket("br-int")),
            ),
            nl=False,
        )


cli.add_command(lab)
cli.add_command(flows)
cli.add_command(trace)
cli.add_command(explain)
cli.add_command(status)
cli.add_command(policy)


def main() -> None:
    try:
        cli(standalone_mode=True)
    except KeyboardInterrupt:
        sys.exit(130)


lab.add_command(lab_faults.restart)
lab.add_command(lab_faults.partition)
lab.add_command(lab_faults.heal)
