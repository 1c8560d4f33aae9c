"""Nodes come and go: a removed node takes its flows (and pods) with it on every other node; an
agent restarted while probes cross nodes loses none of them (flows stay in OVS meanwhile)."""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable

import pytest

from lab import cluster, probe
from tests.lab.conftest import LabFactory, pod_yaml

pytestmark = pytest.mark.lab


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def test_removing_a_node_removes_its_flows_everywhere(make_lab: LabFactory) -> None:
    lab = make_lab("--nodes", "3")
    lab.apply(pod_yaml("x", "a", "node1"), pod_yaml("x", "z", "node3"))
    assert lab.connected("x/a", "x/z")
    node3 = lab.layout.node(3)
    for node in ("node1", "node2"):
        flows = lab.flows(node)
        assert "10.244.3.0/24" in flows and node3.address in flows, f"{node} lacks node3's flows"

    lab.up("--nodes", "2")

    def forgotten(node: str) -> bool:
        flows = lab.flows(node)
        return "10.244.3.0/24" not in flows and node3.address not in flows

    for node in ("node1", "node2"):
        assert wait_for(functools.partial(forgotten, node)), (
            f"{node} still has node3's flows:\n{lab.flows(node)}"
        )
    assert set(lab.pods()) == {"x/a"}
    assert not (lab.layout.dir / "node3").exists()
    assert "node3" not in lab.cli("get", "nodes").stdout


def test_agent_restart_loses_no_probe_across_nodes(make_lab: LabFactory) -> None:
    lab = make_lab("--nodes", "2")
    lab.apply(
        pod_yaml("x", "a", "node1", "80/TCP,53/UDP"), pod_yaml("x", "b", "node2", "80/TCP,53/UDP")
    )
    a = probe.Endpoint("x/a", lab.layout.pod_netns("x", "a"), lab.pod_ip("x/a"))
    b = probe.Endpoint("x/b", lab.layout.pod_netns("x", "b"), lab.pod_ip("x/b"))
    results: list[probe.ProbeResult] = []
    stop = threading.Event()

    def keep_probing() -> None:
        while not stop.is_set():
            batch = [probe.Probe(a, b, 80, "TCP"), probe.Probe(b, a, 53, "UDP")]
            results.extend(probe.run_probes(batch, timeout=1.0))
            time.sleep(0.02)

    prober = threading.Thread(target=keep_probing)
    prober.start()
    try:
        time.sleep(0.3)
        before = len(results)
        old_pid = cluster.agent_pid(lab.layout.node(2))
        cluster.restart_agent(lab.layout.node(2))
        assert cluster.agent_pid(lab.layout.node(2)) not in (None, old_pid)
        during = len(results) - before
        time.sleep(0.3)
    finally:
        stop.set()
        prober.join()
    lost = [
        f"{r.probe.src.ref}->{r.probe.dst.ref}/{r.probe.protocol}: {r.detail}"
        for r in results
        if not r.connected
    ]
    assert lost == [], f"{len(lost)} of {len(results)} probes lost: {lost[:5]}"
    assert during >= 10, "the restart was too quick to have been probed through"
