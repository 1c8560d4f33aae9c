"""Pods attached by the real `plumb` executable to a running agent (Kubernetes source, private
OVS): they reach each other and the node, spoofed IP, MAC and ARP go nowhere, and an agent
restart keeps every pod connected (its interfaces rebuilt from OVS external_ids)."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cni import executable
from controller.agent import Agent
from flows.cookie import Category, Cookie
from flows.pipeline import TABLES
from lab.cniruntime import CniRuntime, NetworkList, RuntimeConf
from tests.kube.test_agent import world  # noqa: F401  (the fixture)

pytestmark = pytest.mark.ovs

CONFLIST = {
    "cniVersion": "1.0.0",
    "name": "plumb",
    "plugins": [{"type": "plumb", "ipam": {"type": "host-local"}}],
}


class Pods:
    """Makes pod namespaces and attaches them through the CNI executable, like a runtime."""

    def __init__(self, config: Any, tmp: Path) -> None:
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PLUMB_CNI_SOCKET": config.cni_socket}
        self.runtime = CniRuntime(
            [str(executable.bin_dir()), "/usr/lib/cni"], str(tmp / "cache"), base_env=env
        )
        self.net = NetworkList.from_dict(CONFLIST)
        self.made: list[tuple[str, RuntimeConf]] = []

    def add(self, name: str) -> dict[str, str]:
        netns = f"plumbpod-{uuid.uuid4().hex[:8]}"
        subprocess.run(["ip", "netns", "add", netns], check=True)
        rt = RuntimeConf(
            container_id=uuid.uuid4().hex,
            netns=f"/run/netns/{netns}",
            args=(("K8S_POD_NAMESPACE", "default"), ("K8S_POD_NAME", name)),
        )
        self.made.append((netns, rt))
        result = self.runtime.add(self.net, rt)
        container = next(i for i in result["interfaces"] if i.get("sandbox"))
        return {
            "netns": netns,
            "ip": result["ips"][0]["address"].split("/")[0],
            "mac": container["mac"],
        }

    def cleanup(self) -> None:
        """DEL every pod and remove its namespace, all of them even when a DEL fails (the
        first failure is raised afterwards)."""
        failures: list[Exception] = []
        for netns, rt in self.made:
            try:
                self.runtime.delete(self.net, rt)
            except Exception as exc:
                failures.append(exc)
            subprocess.run(["ip", "netns", "delete", netns], capture_output=True)
        if failures:
            raise failures[0]


@pytest.fixture
def node(world, tmp_path) -> Iterator[tuple[Agent, Pods, Any]]:  # noqa: F811
    _api, ovs, config = world
    agent = Agent(config, sync_timeout=10, netns=ovs.netns)
    agent.start()
    pods = Pods(config, tmp_path)
    try:
        yield agent, pods, ovs
    finally:
        pods.cleanup()
        agent.stop()


def run_in(netns: str, *cmd: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", netns, *cmd], capture_output=True, text=True, check=check
    )


def pings(netns: str, target: str, *extra: str) -> bool:
    return run_in(netns, "ping", "-c", "1", "-W", "1", *extra, target).returncode == 0


GATEWAY = "10.244.0.1"


def test_two_pods_reach_each_other_and_the_node(node):
    _agent, pods, ovs = node
    a, b = pods.add("a"), pods.add("b")
    assert pings(a["netns"], b["ip"])
    assert pings(b["netns"], a["ip"])
    assert pings(a["netns"], GATEWAY)
    assert run_in(ovs.netns, "ping", "-c", "1", "-W", "1", b["ip"]).returncode == 0


def test_a_pod_attached_or_detached_moves_the_last_sync(node):
    agent, pods, _ovs = node
    assert agent.sync_clock.wait_synced(10)
    before = time.time()
    time.sleep(0.01)
    assert agent.sync_clock.last_sync is not None and agent.sync_clock.last_sync < before
    pods.add("a")
    assert agent.sync_clock.wait_synced(10)
    attached = agent.sync_clock.last_sync
    assert attached is not None and attached > before
    pods.cleanup()
    pods.made.clear()
    assert agent.sync_clock.wait_synced(10)
    assert agent.sync_clock.last_sync is not None and agent.sync_clock.last_sync > attached


def test_a_pod_forging_its_source_ip_is_dropped(node):
    _agent, pods, _ovs = node
    a, b = pods.add("a"), pods.add("b")
    assert pings(a["netns"], b["ip"])
    run_in(a["netns"], "ip", "addr", "add", "10.244.0.250/24", "dev", "eth0", check=True)
    assert not pings(a["netns"], b["ip"], "-I", "10.244.0.250")
    assert pings(a["netns"], b["ip"], "-I", a["ip"])


def ofport(agent: Agent, pod: dict[str, str]) -> int:
    assert agent.podnet is not None
    return next(i.ofport for i in agent.podnet.store.all() if i.mac == pod["mac"])


def trace(ovs: Any, packet: str) -> str:
    """The trace, following conntrack as a new connection."""
    return str(ovs.appctl("ofproto/trace", "br-int", packet, "--ct-next", "trk,new"))


def dropped_by_miss_of(table_name: str, text: str) -> bool:
    """ofproto/trace numbers tables: the last table visited is this one's miss flow (drop)."""
    return f"\n {TABLES[table_name].id}. priority 0," in text and verdict(text) == "drop"


def verdict(text: str) -> str:
    """The datapath actions of the trace's last pass."""
    return text.rsplit("Datapath actions:", 1)[1].splitlines()[0].strip()


def test_a_pod_forging_its_mac_is_dropped_by_spoof_guard(node):
    agent, pods, ovs = node
    a, b = pods.add("a"), pods.add("b")
    port = ofport(agent, a)
    packet = "in_port={},dl_src={},dl_dst={},ip,nw_src={},nw_dst={},nw_proto=1"
    honest = trace(ovs, packet.format(port, a["mac"], b["mac"], a["ip"], b["ip"]))
    assert f"output port is {ofport(agent, b)}" in honest, honest
    forged = trace(ovs, packet.format(port, "0a:58:de:ad:be:ef", b["mac"], a["ip"], b["ip"]))
    assert verdict(forged) == "drop"
    assert dropped_by_miss_of("SpoofGuard", forged)
    run_in(a["netns"], "ip", "link", "set", "eth0", "address", "0a:58:de:ad:be:ef", check=True)
    run_in(a["netns"], "ip", "neigh", "flush", "all")
    assert not pings(a["netns"], b["ip"])


FORGED_ARP = """
import socket, struct, sys
src_mac, dst_mac, claimed_ip, dst_ip = sys.argv[1:5]
mac = lambda m: bytes.fromhex(m.replace(":", ""))
ip = socket.inet_aton
frame = mac(dst_mac) + mac(src_mac) + struct.pack("!H", 0x0806)
frame += struct.pack("!HHBBH", 1, 0x0800, 6, 4, 2)
frame += mac(src_mac) + ip(claimed_ip) + mac(dst_mac) + ip(dst_ip)
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("eth0", 0))
for _ in range(3):
    s.send(frame)
"""


def test_forged_arp_is_dropped_and_does_not_poison_a_neighbour(node):
    agent, pods, ovs = node
    a, b = pods.add("a"), pods.add("b")
    port = ofport(agent, a)
    packet = "in_port={},dl_src={},dl_dst={},arp,arp_op=2,arp_spa={},arp_sha={},arp_tpa={}"
    honest = trace(ovs, packet.format(port, a["mac"], b["mac"], a["ip"], a["mac"], b["ip"]))
    assert verdict(honest) != "drop"
    forged = trace(ovs, packet.format(port, a["mac"], b["mac"], GATEWAY, a["mac"], b["ip"]))
    assert verdict(forged) == "drop"
    assert dropped_by_miss_of("ARPSpoofGuard", forged)
    assert pings(b["netns"], GATEWAY)
    gateway_mac = run_in(b["netns"], "ip", "neigh", "show", GATEWAY).stdout.split()[4]
    # Pod a tells pod b that the gateway's address is at a's MAC.
    run_in(
        a["netns"],
        sys.executable,
        "-c",
        FORGED_ARP,
        a["mac"],
        b["mac"],
        GATEWAY,
        b["ip"],
        check=True,
    )
    assert run_in(b["netns"], "ip", "neigh", "show", GATEWAY).stdout.split()[4] == gateway_mac


def test_agent_restart_keeps_pods_connected_and_moves_their_flows(world, tmp_path):  # noqa: F811
    _api, ovs, config = world
    first = Agent(config, sync_timeout=10, netns=ovs.netns)
    first.start()
    pods = Pods(config, tmp_path)
    second = None
    try:
        a, b = pods.add("a"), pods.add("b")
        assert pings(a["netns"], b["ip"])
        first.stop()
        assert pings(a["netns"], b["ip"]), "flows must stay while no agent runs"
        second = Agent(config, sync_timeout=10, netns=ovs.netns)
        second.start()
        assert second.podnet is not None and len(second.podnet.store) == 2
        assert pings(a["netns"], b["ip"])
        dump = ovs.ofctl("-O", "OpenFlow15", "--no-stats", "dump-flows", "br-int")
        pod_cookies = {
            line.split(",")[0].split("=")[1] for line in dump.splitlines() if "cookie=" in line
        }
        assert all(Cookie.decode(int(c, 16)).round == 2 for c in pod_cookies)
        assert any(Cookie.decode(int(c, 16)).category is Category.POD for c in pod_cookies)
    finally:
        pods.cleanup()
        (second or first).stop()
