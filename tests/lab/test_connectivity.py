"""Pods reach each other on one node and across nodes, and nodes reach pods, in every encap mode
(geneve, vxlan, none); full-size frames with DF set cross nodes at the pod MTU."""

from __future__ import annotations

import subprocess

import pytest

from lab import probe
from tests.lab.conftest import Lab, LabFactory, arp_answers, df_ping, echo_replies, pod_yaml

pytestmark = pytest.mark.lab

PORTS = "80/TCP,53/UDP"
# Uplink 1500 minus the encapsulation: outer IPv4 20 + UDP 8 + Geneve/VXLAN 8 + Ethernet 14.
POD_MTU = {"geneve": 1450, "vxlan": 1450, "none": 1500}


@pytest.fixture(scope="module", params=["geneve", "vxlan", "none"])
def lab(request: pytest.FixtureRequest, module_lab: LabFactory) -> Lab:
    lab = module_lab("--nodes", "2", "--encap", request.param)
    lab.apply(
        pod_yaml("x", "a", "node1", PORTS),
        pod_yaml("x", "b", "node1", PORTS),
        pod_yaml("y", "c", "node2", PORTS),
    )
    return lab


def test_pod_to_pod_on_one_node(lab: Lab) -> None:
    assert lab.connected("x/a", "x/b", 80, "TCP")
    assert lab.connected("x/b", "x/a", 53, "UDP")


def test_pod_to_pod_across_nodes(lab: Lab) -> None:
    for src, dst in (("x/a", "y/c"), ("y/c", "x/b")):
        assert lab.connected(src, dst, 80, "TCP"), f"{src} -> {dst} TCP"
        assert lab.connected(src, dst, 53, "UDP"), f"{src} -> {dst} UDP"


def test_a_closed_port_across_nodes_is_refused_not_lost(lab: Lab) -> None:
    result = lab.probe("x/a", "y/c", 81)
    assert not result["connected"] and result["detail"] == "refused"


def test_nodes_reach_local_and_remote_pods(lab: Lab) -> None:
    pods = {ref: lab.pod_ip(ref) for ref in ("x/a", "y/c")}
    probes = [
        probe.Probe(
            probe.Endpoint(node, lab.node_netns(node), ""), probe.Endpoint(ref, "", ip), 80, "TCP"
        )
        for node in ("node1", "node2")
        for ref, ip in pods.items()
    ]
    results = probe.run_probes(probes, timeout=2.0)
    failed = [f"{r.probe.src.ref} -> {r.probe.dst.ref}" for r in results if not r.connected]
    assert failed == []


def test_full_size_df_ping_crosses_nodes(lab: Lab) -> None:
    spec = lab.layout.read_spec()
    assert spec is not None
    mtu = POD_MTU[spec.encap]
    netns = lab.layout.pod_netns("x", "a")
    link = subprocess.run(
        ["ip", "-n", netns, "-o", "link", "show", "eth0"], capture_output=True, text=True
    )
    assert f" mtu {mtu} " in link.stdout
    remote = lab.pod_ip("y/c")
    ok = df_ping(netns, remote, mtu)
    assert ok.returncode == 0 and ok.stdout.strip() == str(mtu), ok.stderr
    too_big = df_ping(netns, remote, mtu + 1)
    assert too_big.returncode != 0 and "Message too long" in too_big.stderr


def test_every_packet_is_carried_once_on_one_node(lab: Lab) -> None:
    assert echo_replies(lab.layout.pod_netns("x", "a"), lab.pod_ip("x/b")) == [1] * 5


# On the userspace datapath a pod's host veth is also a kernel interface: unless the CNI server
# quiets it (cni.netns), the node's kernel answers the pod's ARP for its gateway too and forwards
# a second copy of every cross-node packet through plumb-gw0.
def test_only_the_gateway_answers_a_pods_arp_for_it(lab: Lab) -> None:
    gateway = lab.pod_ip("x/a").rsplit(".", 1)[0] + ".1"
    answers = arp_answers(lab.layout.pod_netns("x", "a"), gateway, lab.pod_ip("x/a"))
    assert len(answers) == 1, f"{gateway} answered by {answers}"


def test_every_packet_is_carried_once_across_nodes(lab: Lab) -> None:
    assert echo_replies(lab.layout.pod_netns("x", "a"), lab.pod_ip("y/c")) == [1] * 5
