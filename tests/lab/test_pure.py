"""The lab's pure parts, no root needed: names and addresses, objects from YAML, scheduling,
truth tables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from lab.apply import _schedule
from lab.layout import LabLayout, LabSpec, LabSpecError, node_cidr
from lab.objects import ManifestsDir, ObjectError, read_objects
from lab.probe import Endpoint, Probe, ProbeResult, matrix_json, matrix_probes, truth_table


def test_node_cidrs_are_numbered_from_one() -> None:
    assert node_cidr("10.244.0.0/16", 1) == "10.244.1.0/24"
    assert node_cidr("10.244.0.0/16", 255) == "10.244.255.0/24"
    assert node_cidr("192.168.0.0/20", 3) == "192.168.3.0/24"
    with pytest.raises(LabSpecError, match="holds 15 node subnets"):
        node_cidr("192.168.0.0/20", 16)
    with pytest.raises(LabSpecError, match="/23 or larger"):
        node_cidr("10.0.0.0/24", 1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "Bad_Name"}, "--name"),
        ({"name": "x" * 25}, "--name"),
        ({"nodes": 0}, "--nodes"),
        ({"encap": "gre"}, "--encap"),
        ({"pod_cidr": "10.244.0.0/33"}, "--pod-cidr"),
        ({"pod_cidr": "10.244.0.0/23", "nodes": 2}, "holds 1 node subnets, not 2"),
    ],
)
def test_bad_specs_name_their_flag(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(LabSpecError, match=message):
        LabSpec(**kwargs)  # type: ignore[arg-type]


def test_names_of_two_labs_never_meet() -> None:
    a, b = LabLayout("a"), LabLayout("a-node1")
    names_a = {a.underlay_netns, a.node(1).netns, a.node(2).netns, a.pod_netns("x", "p")}
    names_b = {b.underlay_netns, b.node(1).netns, b.pod_netns("x", "p")}
    assert not names_a & names_b
    assert a.node(2).address == "172.30.0.12" and a.node(2).phys_mac == "02:50:4c:00:00:02"
    assert len(str(a.node(1).ovs_rundir / "br-int.mgmt")) < 108
    assert len(str(LabLayout("x" * 24).node(200).cni_socket)) < 108


def test_objects_from_multi_document_yaml_and_lists(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(
        "kind: Pod\nmetadata: {name: p}\n---\n"
        "kind: List\nitems:\n- {kind: Namespace, metadata: {name: n, namespace: ignored}}\n"
    )
    (tmp_path / "b.yml").write_text("kind: NetworkPolicy\nmetadata: {name: np, namespace: n}\n")
    (tmp_path / "notes.txt").write_text("not yaml: [")
    objs = read_objects(tmp_path)
    assert [(o["kind"], o["metadata"].get("namespace")) for o in objs] == [
        ("Pod", "default"),
        ("Namespace", None),
        ("NetworkPolicy", "n"),
    ]
    assert objs[2]["apiVersion"] == "networking.k8s.io/v1"
    (tmp_path / "c.yaml").write_text("kind: Service\nmetadata: {name: s}\n")
    with pytest.raises(ObjectError, match=r"c\.yaml: kind 'Service'"):
        read_objects(tmp_path)


def test_manifests_dir_writes_one_file_per_object_atomically(tmp_path: Path) -> None:
    d = ManifestsDir(tmp_path)
    d.write({"kind": "Pod", "metadata": {"name": "b-c", "namespace": "a"}})
    d.write({"kind": "Pod", "metadata": {"name": "c", "namespace": "a-b"}})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pod_a-b_c.yaml", "pod_a_b-c.yaml"]
    assert [o["metadata"]["name"] for o in d.list("Pod")] == ["b-c", "c"]
    assert d.remove("Pod", "a", "b-c") and not d.remove("Pod", "a", "b-c")


def test_pods_without_a_node_spread_round_robin(tmp_path: Path) -> None:
    layout = LabLayout("t", root=tmp_path)
    pods: list[dict[str, Any]] = [{"kind": "Pod", "metadata": {"name": f"p{i}"}} for i in range(5)]
    pods[1]["spec"] = {"nodeName": "node1"}
    _schedule(layout, LabSpec("t", nodes=3), pods)
    assert [p["spec"]["nodeName"] for p in pods] == ["node1", "node1", "node2", "node3", "node2"]


def test_truth_table_is_the_e2e_layout() -> None:
    a, b = Endpoint("x/a", "n", "10.0.0.1"), Endpoint("x/b", "n", "10.0.0.2")
    probes = matrix_probes([a, b], [80], ["TCP"])
    results = [ProbeResult(p, p.dst is a, 1.0) for p in probes]
    results[0] = ProbeResult(probes[0], False, 1.0, skipped="no SCTP in this kernel")
    assert truth_table(["x/a", "x/b"], results, 80, "TCP") == "-\tx/a\tx/b\nx/a\t?\tX\nx/b\t.\tX"
    data: Any = matrix_json(["x/a", "x/b"], results)
    assert data["results"][1] == {
        "from": "x/a", "to": "x/b", "port": 80, "protocol": "TCP", "connected": False
    }  # fmt: skip
    assert isinstance(probes[0], Probe)
