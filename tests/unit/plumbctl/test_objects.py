"""plumbctl.objects: the cluster's objects for `explain` on a node, read from a manifests
directory exactly as the agent's manifests source reads it (no OVS, no API server), and an API
server that cannot be reached reported at once."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from plumbctl.main import cli
from plumbctl.objects import ObjectsError, from_kube, from_manifests

PODS = """\
apiVersion: v1
kind: Pod
metadata: {name: a, labels: {app: a}}
spec: {nodeName: n1, containers: [{name: c, ports: [{containerPort: 80}]}]}
status: {podIP: 10.244.1.2}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x}
spec: {nodeName: n2}
status: {podIP: 10.244.2.2}
"""
LIST = """\
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Namespace, metadata: {name: x, labels: {team: blue}}}
- apiVersion: v1
  kind: Node
  metadata: {name: n1}
  spec: {podCIDR: 10.244.1.0/24}
  status: {addresses: [{type: InternalIP, address: 172.30.0.11}]}
- apiVersion: networking.k8s.io/v1
  kind: NetworkPolicy
  metadata: {name: deny, namespace: x}
  spec: {podSelector: {}}
"""


def names(objects: list[dict[str, Any]]) -> list[str]:
    return [f"{o['metadata'].get('namespace', '')}/{o['metadata']['name']}" for o in objects]


def test_the_agent_format_multi_document_lists_and_subdirectories(tmp_path: Path) -> None:
    (tmp_path / "pods.yaml").write_text(PODS)
    (tmp_path / "more").mkdir()
    (tmp_path / "more" / "list.yml").write_text(LIST)
    (tmp_path / ".pods.yaml.tmp").write_text("kind: [")  # a writer's work in progress
    (tmp_path / "notes.txt").write_text("not a manifest")
    objects = from_manifests(tmp_path)
    assert objects.origin == str(tmp_path)
    assert names(objects.pods) == ["default/a", "x/b"]  # a namespace left out is "default"
    assert names(objects.namespaces) == ["/x"] and names(objects.nodes) == ["/n1"]
    assert names(objects.policies) == ["x/deny"]
    a = objects.pods[0]
    assert a["status"]["podIP"] == "10.244.1.2" and a["spec"]["nodeName"] == "n1"
    assert a["spec"]["containers"][0]["ports"] == [{"containerPort": 80}]
    assert objects.nodes[0]["status"]["addresses"][0]["address"] == "172.30.0.11"


def test_the_later_file_wins_a_duplicate_and_a_bad_file_is_left_out(tmp_path: Path) -> None:
    (tmp_path / "1.yaml").write_text(PODS)
    (tmp_path / "2.yaml").write_text(PODS.replace("10.244.1.2", "10.244.1.9"))
    (tmp_path / "3.yaml").write_text("kind: Pod\nmetadata: [")
    pods = from_manifests(tmp_path).pods
    assert [p["status"]["podIP"] for p in pods] == ["10.244.1.9", "10.244.2.2"]


def test_a_missing_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ObjectsError, match="not a directory"):
        from_manifests(tmp_path / "nope")


def test_explain_options_are_checked_before_any_ovs_is_touched(tmp_path: Path) -> None:
    both = ["explain", "--all", "--manifests", str(tmp_path), "--kubeconfig", "k"]
    result = CliRunner().invoke(cli, [*both, "--ovs-rundir", str(tmp_path)])
    assert result.exit_code == 2 and "not both" in result.output
    missing = ["explain", "--all", "--manifests", str(tmp_path / "nope")]
    result = CliRunner().invoke(cli, [*missing, "--ovs-rundir", str(tmp_path)])
    assert result.exit_code == 1 and "not a directory" in result.output
    # Objects but no OVS there: the error names the run directory.
    (tmp_path / "pods.yaml").write_text(PODS)
    no_ovs = ["explain", "--all", "--manifests", str(tmp_path)]
    result = CliRunner().invoke(cli, [*no_ovs, "--ovs-rundir", str(tmp_path / "ovs")])
    assert result.exit_code == 1 and "no OVSDB socket" in result.output


def test_an_unreachable_api_server_is_reported_at_once(tmp_path: Path) -> None:
    """--kubeconfig naming a port nobody listens on: the refusal is the error, well before
    the 30 s the API server would otherwise be given to list everything."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # free once closed: nothing listens there
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    started = time.monotonic()
    with pytest.raises(ObjectsError, match=r"--kubeconfig .*kubeconfig: .*(refused|Errno)"):
        from_kube(str(kubeconfig))
    assert time.monotonic() - started < 10
