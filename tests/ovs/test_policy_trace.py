"""NetworkPolicy flows in a real ovs-vswitchd: the compiled flows dump as their golden text, and
`ofproto/trace` (following conntrack as a new connection) allows and drops what Kubernetes says,
including traffic from the tunnel, node traffic, established connections, label changes through
the reconciler and two restart rounds side by side. Last, random policies over random labels on
two nodes, judged against the pure verdict.

Bridges need no ports: ofproto/trace takes any in_port and reports the output port it would use.
Traces go over the daemon's unixctl socket (python-ovs), 1-2 ms each instead of a process.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from controller.bridge import BridgeSettings, ensure_node_bridge
from controller.netpol_model import World, pod_info, verdict
from controller.policies import LocalPod, PolicyReconciler
from controller.store import Store
from controller.switch import Switch
from flows.cookie import (
    CATEGORY_MASK,
    ROUND_MASK,
    Category,
    Cookie,
    category_filter,
    round_filter,
)
from flows.fields import GATEWAY_OFPORT, TUNNEL_OFPORT, VIRTUAL_MAC
from flows.node import PeerNode, node_cookie, peer_node_flows, tunnel_flows
from flows.pod import LocalNode, PodPort, gateway_flows, pod_flows
from flows.skeleton import skeleton_flows
from tests.unit.netpol.golden_world import golden_flows, golden_lines
from tests.unit.netpol.helpers import labels, namespace, pod, policy
from tests.unit.netpol.simulate import ofports
from tests.unit.netpol.strategies import EXTERNAL, NODE_SUBNETS, PROBES, RandomWorld, worlds

pytestmark = pytest.mark.ovs

ADDRESSES = {"node-a": "192.168.77.11", "node-b": "192.168.77.12"}


def mac_of(ip: str) -> str:
    return "0a:58:" + ":".join(f"{int(b):02x}" for b in ip.split("."))


def _unixctl(path: str) -> Any:
    import ovs.unixctl.client

    error, client = ovs.unixctl.client.UnixctlClient.create(path)
    assert not error, f"unixctl {path}: {error}"
    return client


class NodeBridge:
    """One node of a simulated cluster: a bridge holding the skeleton, the node's gateway, the
    tunnel end, the route to the other node, its local pods' flows and (later) policy flows."""

    def __init__(self, ovs: Any, name: str, peer: str) -> None:
        self.name = name
        self.bridge = f"br-{uuid.uuid4().hex[:8]}"
        self.cidr = f"{NODE_SUBNETS[name]}.0/24"
        self.local = LocalNode(
            self.cidr, f"{NODE_SUBNETS[name]}.1", mac_of(f"{NODE_SUBNETS[name]}.1")
        )
        ensure_node_bridge(ovs.db_remote, BridgeSettings(name=self.bridge, datapath_type="netdev"))
        deadline = time.monotonic() + 5
        while not ovs.mgmt_socket(self.bridge).exists():
            assert time.monotonic() < deadline, "bridge management socket never appeared"
            time.sleep(0.02)
        self.switch = Switch(ovs.mgmt_socket(self.bridge), request_timeout=5)
        self.switch.start()
        self.switch.wait_connected(10)
        other = PeerNode(peer, ADDRESSES[peer], f"{NODE_SUBNETS[peer]}.0/24")
        self.switch.replace_many(
            {
                "pipeline": skeleton_flows(1),
                "node/local": gateway_flows(self.local, Cookie(1, Category.NODE, 0).value)
                + tunnel_flows("geneve", node_cookie(1, name)),
                f"node/{peer}": peer_node_flows(other, self.local, "geneve", node_cookie(1, peer)),
            }
        )
        self.ctl_path = str(ovs.ctl_socket("ovs-vswitchd"))
        self.unixctl = _unixctl(self.ctl_path)
        self.pods: dict[tuple[str, str], PodPort] = {}

    def set_pods(self, pods: list[dict[str, Any]]) -> None:
        """Make the bridge's pod flows those of `pods` scheduled here (ofports as `ofports`)."""
        wanted = {
            key: PodPort(t.ofport, t.ip, mac_of(t.ip))
            for key, t in ofports(pods, self.name).items()
        }
        changes: dict[str, Any] = {f"pod/{k[0]}/{k[1]}": [] for k in self.pods if k not in wanted}
        for key, port in wanted.items():
            cookie = Cookie(1, Category.POD, port.ofport).value
            changes[f"pod/{key[0]}/{key[1]}"] = pod_flows(port, self.local, cookie)
        self.switch.replace_many(changes)
        self.pods = wanted

    def local_pods(self) -> list[LocalPod]:
        return [LocalPod(k[0], k[1], p.ofport, p.ip) for k, p in self.pods.items()]

    def clear_policy_flows(self) -> None:
        self.switch.replace_many({o: [] for o in self.switch.owners() if o.startswith("policy/")})

    def trace(self, packet: str, state: str = "trk,new") -> str:
        args = [self.bridge, packet, "--ct-next", state]
        error, result, output = self.unixctl.transact("ofproto/trace", args)
        if error:  # a broken connection (errno): reconnect once
            self.unixctl.close()
            self.unixctl = _unixctl(self.ctl_path)
            error, result, output = self.unixctl.transact("ofproto/trace", args)
        assert not error and result is None, f"trace {packet} failed: {error} {result}"
        return str(output)

    def close(self, ovs: Any) -> None:
        self.switch.stop()
        self.unixctl.close()
        ovs.vsctl("--if-exists", "del-br", self.bridge)


def packet(head: str, src: str, dst: str, protocol: str = "TCP", port: int | None = 80) -> str:
    """A trace packet: `head` (in_port, tunnel and Ethernet fields), then IP and L4 fields in
    the order ovs-ofctl wants them (the protocol keyword before the fields it allows)."""
    if protocol == "ICMP":
        return f"{head},icmp,nw_src={src},nw_dst={dst},nw_ttl=64,icmp_type=8"
    proto = protocol.lower()
    return f"{head},{proto},nw_src={src},nw_dst={dst},nw_ttl=64,{proto}_dst={port}"


def outputs_to(text: str, port: int) -> bool:
    return re.search(rf"-> output port is {port}$", text, re.MULTILINE) is not None


@pytest.fixture
def node(ovs) -> Iterator[NodeBridge]:
    bridge = NodeBridge(ovs, "node-a", "node-b")
    yield bridge
    bridge.close(ovs)


# --- goldens --------------------------------------------------------------------------------


def test_compiled_flows_dump_as_their_golden_text(ovs, node):
    node.switch.replace_flows("policy-golden", golden_flows())
    out = ovs.ofctl("-O", "OpenFlow15", "--names", "--no-stats", "dump-flows", node.bridge)
    dumped = [line for line in out.splitlines() if _category(line) is Category.POLICY]
    assert sorted(dumped) == sorted(golden_lines("policy"))


def _category(line: str) -> Category | None:
    found = re.search(r"cookie=(0x[0-9a-f]+)", line)
    return Cookie.decode(int(found.group(1), 16)).category if found else None


# --- scenarios through the reconciler -------------------------------------------------------

NAMESPACES = [namespace("x", team="red"), namespace("y", team="blue")]
PODS = [
    pod("x", "a", "10.244.0.3", app="a"),
    pod("x", "b", "10.244.0.4", {"http": 8080}, app="b"),
    pod("x", "c", "10.244.0.5", app="c"),
    pod("y", "d", "10.244.1.6", node="node-b", app="d"),
]
NODE_A = {"metadata": {"name": "node-a"}, "spec": {"podCIDR": "10.244.0.0/24"}}


class Cluster:
    """node-a's bridge, a store and a reconciler over them (the agent's policy half)."""

    def __init__(self, node: NodeBridge, round_: int = 1) -> None:
        self.node = node
        self.store = Store()
        for obj in NAMESPACES:
            self.store.upsert("Namespace", obj)
        for obj in PODS:
            self.store.upsert("Pod", obj)
        self.store.upsert("Node", NODE_A)
        node.set_pods(PODS)
        self.reconciler = PolicyReconciler(
            self.store, node.switch, round_, "node-a", node.local_pods, reuse_delay=0
        )
        self.reconciler.start()

    def apply(self, *policies: dict[str, Any]) -> None:
        for obj in policies:
            self.store.upsert("NetworkPolicy", obj)
        assert self.reconciler.wait_idle(5)

    def port(self, name: str) -> PodPort:
        return self.node.pods[("x", name)]

    def local_trace(self, src: str, dst: str, protocol: str = "TCP", port: int | None = 80) -> str:
        s, d = self.port(src), self.port(dst)
        head = f"in_port={s.ofport},dl_src={s.mac},dl_dst={d.mac}"
        return self.node.trace(packet(head, s.ip, d.ip, protocol, port))

    def reaches(self, src: str, dst: str, protocol: str = "TCP", port: int | None = 80) -> bool:
        return outputs_to(self.local_trace(src, dst, protocol, port), self.port(dst).ofport)

    def from_tunnel(self, src_ip: str, dst: str, port: int = 80) -> bool:
        d = self.port(dst)
        head = (
            f"in_port={TUNNEL_OFPORT},tun_id=0,tun_src={ADDRESSES['node-b']},"
            f"tun_dst={ADDRESSES['node-a']},dl_src={mac_of(src_ip)},dl_dst={VIRTUAL_MAC}"
        )
        text = self.node.trace(packet(head, src_ip, d.ip, "TCP", port))
        return outputs_to(text, d.ofport)

    def stop(self) -> None:
        self.reconciler.stop()


@pytest.fixture
def cluster(node) -> Iterator[Cluster]:
    made = Cluster(node)
    yield made
    made.stop()


def test_no_policy_lets_everything_through(cluster):
    assert cluster.reaches("a", "b") and cluster.reaches("b", "a", "UDP", 53)
    assert cluster.reaches("a", "b", "ICMP", None)


def test_deny_all_ingress_drops_in_the_ingress_default_table(cluster):
    cluster.apply(policy("x", "deny", podSelector=labels(app="b")))
    text = cluster.local_trace("a", "b")
    assert not outputs_to(text, cluster.port("b").ofport)
    assert "25. ip,reg1=0x4, priority 200" in text, "dropped by IngressDefaultRule"
    assert cluster.reaches("b", "a"), "b's egress is not isolated"


def test_an_allow_rule_opens_exactly_its_peer_and_port(cluster):
    cluster.apply(
        policy(
            "x",
            "allow",
            podSelector=labels(app="b"),
            ingress=[{"from": [{"podSelector": labels(app="a")}], "ports": [{"port": 80}]}],
        )
    )
    assert cluster.reaches("a", "b", "TCP", 80)
    assert not cluster.reaches("a", "b", "TCP", 81)
    assert not cluster.reaches("a", "b", "UDP", 80)
    assert not cluster.reaches("c", "b", "TCP", 80)


def test_named_ports_and_ranges_resolve_in_the_datapath(cluster):
    cluster.apply(
        policy(
            "x",
            "ports",
            podSelector=labels(app="b"),
            ingress=[
                {"ports": [{"port": "http"}, {"protocol": "UDP", "port": 1000, "endPort": 1010}]}
            ],
        )
    )
    assert cluster.reaches("a", "b", "TCP", 8080) and not cluster.reaches("a", "b", "TCP", 80)
    assert cluster.reaches("a", "b", "UDP", 1000) and cluster.reaches("a", "b", "UDP", 1010)
    assert not cluster.reaches("a", "b", "UDP", 1011)


def test_ingress_rules_apply_to_traffic_from_the_tunnel(cluster):
    peer = {"namespaceSelector": labels(team="blue"), "podSelector": labels(app="d")}
    cluster.apply(policy("x", "remote", podSelector=labels(app="b"), ingress=[{"from": [peer]}]))
    assert cluster.from_tunnel("10.244.1.6", "b")
    assert not cluster.from_tunnel("10.244.1.9", "b")
    assert cluster.from_tunnel("10.244.1.9", "a"), "a is not isolated"


def test_egress_isolation_and_allow_to_a_remote_pod(cluster):
    cluster.apply(
        policy(
            "x",
            "out",
            podSelector=labels(app="a"),
            policyTypes=["Egress"],
            egress=[
                {
                    "to": [{"namespaceSelector": labels(team="blue")}],
                    "ports": [{"port": 53, "protocol": "UDP"}],
                }
            ],
        )
    )
    a = cluster.port("a")
    head = f"in_port={a.ofport},dl_src={a.mac},dl_dst={cluster.node.local.gateway_mac}"
    to_d = cluster.node.trace(packet(head, a.ip, "10.244.1.6", "UDP", 53))
    assert outputs_to(to_d, TUNNEL_OFPORT), to_d
    to_d = cluster.node.trace(packet(head, a.ip, "10.244.1.6", "UDP", 54))
    assert not outputs_to(to_d, TUNNEL_OFPORT)
    assert not cluster.reaches("a", "b")
    assert cluster.reaches("b", "a")


def test_established_connections_bypass_the_rules(cluster):
    cluster.apply(policy("x", "deny", podSelector=labels(app="b")))
    s, d = cluster.port("a"), cluster.port("b")
    syn = packet(f"in_port={s.ofport},dl_src={s.mac},dl_dst={d.mac}", s.ip, d.ip)
    assert not outputs_to(cluster.node.trace(syn, "trk,new"), d.ofport)
    assert outputs_to(cluster.node.trace(syn, "trk,est"), d.ofport)


def test_the_node_always_reaches_its_pods(cluster):
    cluster.apply(
        policy("x", "deny", podSelector=labels(app="b"), policyTypes=["Ingress", "Egress"])
    )
    d, gw = cluster.port("b"), cluster.node.local
    head = f"in_port={GATEWAY_OFPORT},dl_src={gw.gateway_mac},dl_dst={d.mac}"
    from_node = cluster.node.trace(packet(head, gw.gateway_ip, d.ip, "TCP", 10250))
    assert outputs_to(from_node, d.ofport)
    head = f"in_port={d.ofport},dl_src={d.mac},dl_dst={gw.gateway_mac}"
    to_node = cluster.node.trace(packet(head, d.ip, gw.gateway_ip, "TCP", 10250))
    assert outputs_to(to_node, GATEWAY_OFPORT)
    assert not cluster.reaches("b", "a")


def test_label_changes_take_effect_through_the_reconciler(cluster):
    cluster.apply(
        policy(
            "x",
            "allow",
            podSelector=labels(app="b"),
            ingress=[{"from": [{"podSelector": labels(role="friend")}]}],
        )
    )
    assert not cluster.reaches("a", "b")
    cluster.store.upsert("Pod", pod("x", "c", "10.244.0.5", app="c", role="friend"))
    assert cluster.reconciler.wait_idle(5)
    # The rule came alive: its action and metric flows, the target's and c's clause flows.
    assert cluster.reconciler.last_bundle == {"owners": 3, "flow_mods": 5}
    assert cluster.reaches("c", "b") and not cluster.reaches("a", "b")
    cluster.store.upsert("Pod", pod("x", "a", "10.244.0.3", app="a", role="friend"))
    assert cluster.reconciler.wait_idle(5)
    assert cluster.reaches("a", "b")
    assert cluster.reconciler.last_bundle == {"owners": 1, "flow_mods": 1}, "only a's clause"
    cluster.store.upsert("Pod", pod("x", "a", "10.244.0.3", app="a"))
    assert cluster.reconciler.wait_idle(5)
    assert not cluster.reaches("a", "b")


def test_namespace_label_changes_take_effect(cluster):
    peer = {"namespaceSelector": labels(team="green")}
    cluster.apply(policy("x", "allow", podSelector=labels(app="b"), ingress=[{"from": [peer]}]))
    assert not cluster.from_tunnel("10.244.1.6", "b")
    cluster.store.upsert("Namespace", namespace("y", team="green"))
    assert cluster.reconciler.wait_idle(5)
    assert cluster.from_tunnel("10.244.1.6", "b")


def test_an_invalid_policy_is_reported_and_the_others_stay_in_force(cluster):
    cluster.apply(
        policy("x", "deny", podSelector=labels(app="b")),
        policy(
            "x",
            "bad",
            podSelector=labels(app="a"),
            ingress=[{"ports": [{"port": 90, "endPort": 80}]}],
        ),
    )
    assert not cluster.reaches("a", "b")
    assert cluster.reaches("b", "a"), "the invalid policy would isolate a: it is skipped"
    status = {(s.namespace, s.name): s for s in cluster.reconciler.status()}
    bad, good = status[("x", "bad")], status[("x", "deny")]
    assert bad.error == "NetworkPolicy x/bad: spec.ingress[0].ports[0].endPort: 80 is below port 90"
    assert not bad.realised and not bad.in_force
    assert good.realised and good.error is None and good.local_pods == ("x/b",)


def test_deleting_the_policy_restores_connectivity_and_leaves_no_flow(cluster):
    cluster.apply(policy("x", "deny", podSelector=labels(app="b")))
    assert not cluster.reaches("a", "b")
    cluster.store.delete("NetworkPolicy", "x", "deny")
    assert cluster.reconciler.wait_idle(5)
    assert cluster.reaches("a", "b")
    left = cluster.node.switch.flow_stats(*category_filter(Category.POLICY))
    assert {s.priority for s in left} == {205}, "only the node's always-allowed flows remain"


def test_two_restart_rounds_side_by_side_keep_the_old_verdicts_until_cleanup(ovs, node):
    first = Cluster(node, round_=1)
    first.apply(
        policy(
            "x",
            "p",
            podSelector=labels(app="b"),
            ingress=[{"from": [{"podSelector": labels(app="a")}]}],
        )
    )
    first.stop()
    # The new agent's reconciler starts from an empty cache, like a restarted agent.
    node.switch.stop()
    node.switch = Switch(ovs.mgmt_socket(node.bridge), request_timeout=5)
    node.switch.start()
    node.switch.wait_connected(10)
    second = Cluster(node, round_=2)
    second.apply(
        policy(
            "x",
            "p",
            podSelector=labels(app="b"),
            ingress=[{"from": [{"podSelector": labels(app="c")}]}],
        )
    )
    try:
        # The old clause flow nw_src=a still carries its round-1 id; the target's flow now
        # carries the round-2 id of the same rule: they must not complete a conjunction.
        assert len(node.switch.flow_stats(*round_filter(1))) > 0, "round 1 is still there"
        assert not second.reaches("a", "b")
        assert second.reaches("c", "b")
        # The agent deletes the whole previous round; here only its policy flows were round 1.
        node.switch.delete_by_cookie(Cookie(1, Category.POLICY).value, ROUND_MASK | CATEGORY_MASK)
        assert not second.reaches("a", "b") and second.reaches("c", "b")
    finally:
        second.stop()


# --- random policies on two nodes, judged against the verdict --------------------------------


@pytest.fixture(scope="module")
def two_nodes(ovs) -> Iterator[dict[str, NodeBridge]]:
    nodes = {
        "node-a": NodeBridge(ovs, "node-a", "node-b"),
        "node-b": NodeBridge(ovs, "node-b", "node-a"),
    }
    yield nodes
    for bridge in nodes.values():
        bridge.close(ovs)


def _load(store: Store, w: RandomWorld) -> None:
    for obj in w.namespaces:
        store.upsert("Namespace", obj)
    for obj in w.pods:
        store.upsert("Pod", obj)
    for obj in w.policies:
        store.upsert("NetworkPolicy", obj)


def _converge(store: Store, first: RandomWorld, second: RandomWorld) -> None:
    """Turn the store's `first` into `second` with ordinary events (updates and deletes)."""
    _load(store, second)
    keep = set(second.pod_keys())
    for ns, name in first.pod_keys():
        if (ns, name) not in keep:
            store.delete("Pod", ns, name)
    policies = {(p["metadata"]["namespace"], p["metadata"]["name"]) for p in second.policies}
    for obj in first.policies:
        key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
        if key not in policies:
            store.delete("NetworkPolicy", *key)
    names = {ns["metadata"]["name"] for ns in second.namespaces}
    for obj in first.namespaces:
        if obj["metadata"]["name"] not in names:
            store.delete("Namespace", "", obj["metadata"]["name"])


def _where(w: RandomWorld, endpoint: Any) -> tuple[str | None, str]:
    """(node, address) of a pod key or an external address."""
    if isinstance(endpoint, str):
        return None, endpoint
    for obj in w.pods:
        info = pod_info(obj)
        if info.key == endpoint:
            return obj["spec"]["nodeName"], str(info.ip)
    raise KeyError(endpoint)


def _datapath_allows(
    nodes: dict[str, NodeBridge], w: RandomWorld, src: Any, dst: Any, probe
) -> bool:
    (src_node, src_ip), (dst_node, dst_ip) = _where(w, src), _where(w, dst)
    if src_node is not None:
        here = nodes[src_node]
        s = here.pods[src]
        if dst_node == src_node:
            d = here.pods[dst]
            head = f"in_port={s.ofport},dl_src={s.mac},dl_dst={d.mac}"
            return outputs_to(here.trace(packet(head, s.ip, d.ip, *probe)), d.ofport)
        head = f"in_port={s.ofport},dl_src={s.mac},dl_dst={here.local.gateway_mac}"
        text = here.trace(packet(head, s.ip, dst_ip, *probe))
        if not outputs_to(text, TUNNEL_OFPORT if dst_node else GATEWAY_OFPORT):
            return False
    if dst_node is None:
        return True
    there = nodes[dst_node]
    d = there.pods[dst]
    if src_node is not None:  # from the other node, through the tunnel
        head = (
            f"in_port={TUNNEL_OFPORT},tun_id=0,tun_src={ADDRESSES[src_node]},"
            f"tun_dst={ADDRESSES[dst_node]},dl_src={mac_of(src_ip)},dl_dst={VIRTUAL_MAC}"
        )
    else:  # from outside, routed by the node into its gateway
        head = f"in_port={GATEWAY_OFPORT},dl_src={there.local.gateway_mac},dl_dst={d.mac}"
    return outputs_to(there.trace(packet(head, src_ip, d.ip, *probe)), d.ofport)


@settings(
    max_examples=25,
    deadline=None,
    # Shrinking through a real bridge takes minutes; the pure twin of this test shrinks well.
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(worlds(max_pods=4, max_policies=3), worlds(max_pods=4, max_policies=3), st.data())
def test_random_policies_in_the_datapath_match_the_verdict(two_nodes, first, second, data):
    stores, reconcilers = {}, {}
    for name, bridge in two_nodes.items():
        bridge.clear_policy_flows()
        bridge.set_pods(first.pods)
        stores[name] = Store()
        _load(stores[name], first)
        reconcilers[name] = PolicyReconciler(
            stores[name], bridge.switch, 1, name, bridge.local_pods
        )
        reconcilers[name].start()
    try:
        for name, bridge in two_nodes.items():
            _converge(stores[name], first, second)
            bridge.set_pods(second.pods)
            reconcilers[name].local_pod_changed(None, True)
        for reconciler in reconcilers.values():
            assert reconciler.wait_idle(10)
        truth = World.of(second.policies, second.pods, second.namespaces)
        endpoints = [*second.pod_keys(), *EXTERNAL]
        probes = data.draw(st.lists(st.sampled_from(PROBES), min_size=3, max_size=4, unique=True))
        for src in endpoints:
            for dst in endpoints:
                if src == dst or (isinstance(src, str) and isinstance(dst, str)):
                    continue
                for probe in probes:
                    expected = verdict(truth, src, dst, *probe)
                    got = _datapath_allows(two_nodes, second, src, dst, probe)
                    assert got == expected, (src, dst, probe, second.policies)
    finally:
        for reconciler in reconcilers.values():
            reconciler.stop()
