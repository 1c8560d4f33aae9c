"""`plumbctl lab`: a Kubernetes-like cluster of network namespaces on this machine.

A stable contract for users and tests (issue 4): the verbs, flags, exit codes and outputs below
do not change without a note in docs/lab.md. Each verb is a thin shell over the `lab` room.
Every verb takes `--name` (default `plumb`); progress goes to stderr, results to stdout.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import click

from lab import apply as lab_apply
from lab import cluster, demo, objects, pods, probe, views
from lab.layout import DEFAULT_NAME, ENCAPS, LabLayout, LabSpecError

PROBE_NOT_CONNECTED = 1
PROBE_ERROR = 2

name_option = click.option(
    "--name", default=DEFAULT_NAME, show_default=True, help="The lab's name (several may run)."
)


def _layout(name: str) -> LabLayout:
    try:
        return LabLayout(name)
    except LabSpecError as exc:
        raise click.BadParameter(str(exc), param_hint="--name") from exc


def _progress() -> Callable[[str], None]:
    start = time.monotonic()

    def say(message: str) -> None:
        click.echo(f"[{time.monotonic() - start:5.1f}s] {message}", err=True)

    return say


def _require_root() -> None:
    if os.geteuid() != 0:
        raise click.ClickException("the lab needs root (network namespaces, Open vSwitch)")


@click.group()
def lab() -> None:
    """Run Plumb on a multi-node cluster of network namespaces."""


# --- up / down ---------------------------------------------------------------------------------


@lab.command()
@name_option
@click.option("--nodes", type=click.IntRange(1, 200), default=None, help="Node count [2].")
@click.option("--encap", type=click.Choice(ENCAPS), default=None, help="Overlay mode [geneve].")
@click.option(
    "--pod-cidr", default=None, help="Cluster pod CIDR, one /24 per node [10.244.0.0/16]."
)
def up(name: str, nodes: int | None, encap: str | None, pod_cidr: str | None) -> None:
    """Build the lab (or bring it to these flags) and wait until every agent is ready.

    Flags left out keep a running lab's values. Nodes can be added or removed; changing
    --encap or --pod-cidr needs `lab down` first."""
    _require_root()
    layout, say = _layout(name), _progress()
    start = time.monotonic()
    try:
        spec = cluster.up(layout.name, nodes, encap, pod_cidr, progress=say)
    except (LabSpecError, cluster.LabError, OSError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(
        f"lab {spec.name} is up: {spec.nodes} node(s), encap {spec.encap}, pod CIDR "
        f"{spec.pod_cidr} ({time.monotonic() - start:.1f}s)"
    )


@lab.command()
@name_option
def down(name: str) -> None:
    """Remove everything the lab made (namespaces, processes, veths, bridges, files)."""
    _require_root()
    layout = _layout(name)
    try:
        found = cluster.down(layout.name, progress=_progress())
    except (cluster.LabError, OSError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"lab {layout.name} removed" if found else f"lab {layout.name}: nothing to remove")


# --- apply / delete ----------------------------------------------------------------------------


def _read(path: str) -> list[dict[str, Any]]:
    try:
        return objects.read_objects(Path(path))
    except objects.ObjectError as exc:
        raise click.ClickException(str(exc)) from exc


def _finish(outcome: lab_apply.Outcome) -> None:
    for line in outcome.lines:
        click.echo(line)
    for error in outcome.errors:
        click.echo(f"error: {error}", err=True)
    if outcome.errors:
        sys.exit(1)


file_option = click.option(
    "-f", "--filename", "path", required=True, type=click.Path(exists=True),
    help="A YAML file or a directory of them.",
)  # fmt: skip


@lab.command("apply")
@name_option
@file_option
def apply_(name: str, path: str) -> None:
    """Create or update Namespaces, Pods and NetworkPolicies."""
    _require_root()
    layout = _layout(name)
    try:
        _finish(lab_apply.apply(layout, _read(path), _progress()))
    except lab_apply.LabNotUp as exc:
        raise click.ClickException(str(exc)) from exc


@lab.command()
@name_option
@file_option
def delete(name: str, path: str) -> None:
    """Delete the Namespaces, Pods and NetworkPolicies named in the files."""
    _require_root()
    layout = _layout(name)
    try:
        _finish(lab_apply.delete(layout, _read(path), _progress()))
    except lab_apply.LabNotUp as exc:
        raise click.ClickException(str(exc)) from exc


# --- get / exec --------------------------------------------------------------------------------


@lab.command()
@name_option
@click.argument("what", type=click.Choice(["pods", "nodes"]))
@click.option("-o", "--output", type=click.Choice(["wide", "json"]), default=None)
def get(name: str, what: str, output: str | None) -> None:
    """List pods or nodes (json: a Kubernetes-style List)."""
    layout = _layout(name)
    if layout.read_spec() is None:
        raise click.ClickException(f"lab {layout.name} is not up")
    items = views.pod_objects(layout) if what == "pods" else views.node_objects(layout)
    if output == "json":
        click.echo(json.dumps({"apiVersion": "v1", "kind": "List", "items": items}, indent=2))
        return
    rows = views.pod_rows(layout, items, output == "wide") if what == "pods" else None
    if rows is None:
        rows = views.node_rows(layout, items, output == "wide")
    click.echo(views.table(rows), nl=False)


def _record(layout: LabLayout, target: str) -> pods.PodRecord:
    namespace, sep, pod = target.partition("/")
    rec = pods.record(layout, namespace, pod) if sep else None
    if rec is None:
        raise LookupError(f"no pod {target!r} in lab {layout.name} (want NAMESPACE/POD)")
    return rec


@lab.command("exec", context_settings={"ignore_unknown_options": True})
@name_option
@click.argument("target")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_(name: str, target: str, command: tuple[str, ...]) -> NoReturn:
    """Run COMMAND inside pod TARGET's network namespace: `lab exec NS/POD -- CMD ...`."""
    _require_root()
    layout = _layout(name)
    try:
        rec = _record(layout, target)
    except LookupError as exc:
        raise click.ClickException(str(exc)) from exc
    os.execvp("ip", ["ip", "netns", "exec", rec.netns, *command])


# --- probe / matrix ----------------------------------------------------------------------------


def _endpoint(layout: LabLayout, target: str) -> probe.Endpoint:
    rec = _record(layout, target)
    if not rec.ip:
        raise LookupError(f"pod {target} has no IP yet")
    return probe.Endpoint(rec.ref, rec.netns, rec.ip)


def _probe_error(message: str, as_json: bool) -> NoReturn:
    if as_json:
        click.echo(json.dumps({"error": message}))
    click.echo(f"error: {message}", err=True)
    sys.exit(PROBE_ERROR)


@lab.command("probe")
@name_option
@click.argument("source")
@click.argument("target")
@click.option("--port", type=click.IntRange(1, 65535), required=True)
@click.option(
    "--protocol",
    type=click.Choice(probe.PROTOCOLS, case_sensitive=False),
    default="TCP",
    metavar="TCP|UDP|SCTP",
)
@click.option("--timeout", type=click.FloatRange(0.01, 600), default=2.0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
def probe_(
    name: str, source: str, target: str, port: int, protocol: str, timeout: float, as_json: bool
) -> NoReturn:
    """Connect from pod SOURCE to pod TARGET (NS/POD each). Exit 0 connected, 1 not, 2 error."""
    layout = _layout(name)
    if os.geteuid() != 0:
        _probe_error("the lab needs root (network namespaces)", as_json)
    try:
        src, dst = _endpoint(layout, source), _endpoint(layout, target)
    except LookupError as exc:
        _probe_error(str(exc), as_json)
    result = probe.run_probes([probe.Probe(src, dst, port, protocol.upper())], timeout)[0]
    if as_json:
        click.echo(json.dumps(result.to_json()))
    else:
        click.echo(_probe_line(result))
    if result.skipped:
        sys.exit(PROBE_ERROR)
    sys.exit(0 if result.connected else PROBE_NOT_CONNECTED)


def _probe_line(r: probe.ProbeResult) -> str:
    p = r.probe
    where = f"{p.src.ref} -> {p.dst.ref} ({p.dst.ip}:{p.port}/{p.protocol})"
    if r.skipped:
        return f"{where}: skipped: {r.skipped}"
    if r.connected:
        return f"{where}: connected in {r.ms:.1f} ms"
    return f"{where}: not connected ({r.detail} after {r.ms:.0f} ms)"


def _ports(text: str) -> list[int]:
    try:
        ports = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise click.BadParameter(f"want ports like 80,81; got {text!r}") from None
    if not ports or not all(1 <= p <= 65535 for p in ports):
        raise click.BadParameter(f"want ports 1 to 65535 like 80,81; got {text!r}")
    return ports


def _protocols(text: str) -> list[str]:
    protos = [p.strip().upper() for p in text.split(",") if p.strip()]
    if not protos or any(p not in probe.PROTOCOLS for p in protos):
        raise click.BadParameter(f"want protocols among {','.join(probe.PROTOCOLS)}; got {text!r}")
    return protos


@lab.command()
@name_option
@click.option("--ports", default="80,81", show_default=True, help="Comma-separated ports.")
@click.option("--protocols", default="TCP", show_default=True, help="e.g. TCP,UDP")
@click.option("--timeout", type=click.FloatRange(0.01, 60), default=1.0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help='{"pods": [...], "results": [...]}')
def matrix(name: str, ports: str, protocols: str, timeout: float, as_json: bool) -> None:
    """Probe every ordered pair of pods in parallel; print e2e-style truth tables."""
    _require_root()
    layout = _layout(name)
    port_list, proto_list = _ports(ports), _protocols(protocols)
    endpoints = [probe.Endpoint(r.ref, r.netns, r.ip) for r in pods.records(layout) if r.ip]
    if not endpoints:
        raise click.ClickException(f"lab {layout.name} has no pods with an IP")
    results = probe.run_probes(probe.matrix_probes(endpoints, port_list, proto_list), timeout)
    refs = [e.ref for e in endpoints]
    if as_json:
        click.echo(json.dumps(probe.matrix_json(refs, results), indent=2))
    else:
        click.echo(probe.matrix_text(refs, results, port_list, proto_list), nl=False)


# --- demo --------------------------------------------------------------------------------------


@lab.command("demo")
@name_option
def demo_(name: str) -> None:
    """Two nodes, pods on both, the matrix, a NetworkPolicy, the matrix again, one pod's flows."""
    _require_root()
    layout = _layout(name)
    try:
        demo.run(layout, click.echo, _progress())
    except (LabSpecError, cluster.LabError, lab_apply.LabNotUp, OSError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from exc
