"""plumb-agent: the composition root. Reads the config, wires the rooms together, runs until
SIGTERM, and stops without touching a flow.

Start order (DESIGN section 8): health server; OVSDB (bridge, table names, gateway, tunnel);
the restart round (bridge external_ids); the OpenFlow switch with the skeleton of the new round;
the source until synced; the local node's gateway (address, MTU, flows) from its PodCIDR; the
pod interfaces rebuilt from OVS port external_ids and their flows reinstalled in the new round;
the CNI server; then the previous round's flows are deleted and the new round persisted.
Readiness gates on /readyz say how far it got; CNI ADD waits for the last one ("network").
"""

from __future__ import annotations

import ipaddress
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import click

from cni.ipam import HostLocalIpam
from cni.netns import in_netns, open_netns
from cni.podnet import PodInterface, PodNetConfig, PodNetwork
from cni.server import CniDispatcher, CniServer
from controller import metrics
from controller.bridge import GATEWAY_PORT, BridgeSettings, ensure_bridge_with
from controller.cni_metrics import MeteredBackend
from controller.config import AgentConfig, load_config
from controller.errors import ConfigError, PlumbError
from controller.gateway import ensure_gateway_address
from controller.health import HealthServer, ReadinessGates, SyncClock
from controller.logs import install_signal_handlers, setup_logging
from controller.nodes import NodeReconciler
from controller.podflows import SwitchPodFlows
from controller.policies import PolicyReconciler, local_pods_of
from controller.sources.kube import KubeSource
from controller.sources.manifests import ManifestsSource
from controller.store import Store, StoreEvent
from controller.switch import Switch
from controller.vswitchd import VswitchdError, add_routes, parse_routes
from flows.cookie import Category, Cookie, next_round, round_filter
from flows.pod import LocalNode, gateway_flows
from flows.skeleton import skeleton_flows
from ovsdb import keys
from ovsdb.client import OvsdbClient

log = logging.getLogger(__name__)

GATES = ("ovsdb", "openflow", "source", "node", "network")
# Encapsulation overhead of an IPv4 underlay, subtracted from the uplink MTU for pods.
TUNNEL_OVERHEAD = {"geneve": 50, "vxlan": 50, "none": 0}
DEFAULT_UPLINK_MTU = 1500
# How long a pod's CNI ADD waits for its NetworkPolicy flows.
POLICY_WAIT = 5.0


class AgentError(PlumbError):
    """The agent cannot reach a working state (the message says which step)."""


class Agent:
    """One node's agent: owns the bridge, the switch connection, the source and the CNI server.

    `netns` names the network namespace the node's OVS and pods live in when the agent itself
    runs elsewhere (tests run several nodes in one process); None means "where I run".
    """

    def __init__(
        self, config: AgentConfig, sync_timeout: float = 60.0, netns: str | None = None
    ) -> None:
        self.config = config
        self.sync_timeout = sync_timeout
        self.netns = netns
        self.gates = ReadinessGates(GATES)
        self.network_ready = threading.Event()
        self.health = HealthServer(config.health_bind_address, self.gates)
        self.store = Store()
        self.store.add_handler(self._count_policies, kinds=["NetworkPolicy"])
        self.round = 0
        self.ovsdb: OvsdbClient | None = None
        self.switch: Switch | None = None
        self.source: KubeSource | ManifestsSource | None = None
        self.podnet: PodNetwork | None = None
        self.nodes: NodeReconciler | None = None
        self.policies: PolicyReconciler | None = None
        self.cni_server: CniServer | None = None
        self.sync_clock = SyncClock(config.source)

    def start(self) -> None:
        self.health.start()
        self.ovsdb = OvsdbClient(self.config.ovsdb_remote)
        bridge = ensure_bridge_with(self.ovsdb, self._bridge_settings(), with_gateway=True)
        self.gates.set("ovsdb")
        previous = self._previous_round()
        self.round = next_round(previous)
        self._start_switch()
        self._start_source()
        gateway_mac = bridge.gateway.mac_in_use if bridge.gateway else ""
        node = local_node(self.store, self.config.node_name, gateway_mac)
        self._install_node(node)
        self._start_pod_network(node)
        self._start_nodes(node)
        self._finish_round(previous)
        self._start_sync_clock()
        self.gates.set("network")
        self.network_ready.set()
        log.info("agent ready node=%s round=%d", self.config.node_name, self.round)

    def stop(self) -> None:
        """Stop serving and watching, disconnect; every installed flow stays in OVS."""
        self.sync_clock.stop()
        if self.cni_server is not None:
            self.cni_server.stop()
        if self.source is not None:
            self.source.stop()
        if self.nodes is not None:
            self.nodes.stop()
        if self.policies is not None:
            self.policies.stop()
        if self.switch is not None:
            self.switch.stop()
        if self.ovsdb is not None:
            self.ovsdb.close()
        self.health.stop()

    def _count_policies(self, _event: StoreEvent) -> None:
        metrics.NETWORK_POLICIES.set(self.store.count("NetworkPolicy"))

    @property
    def pod_mtu(self) -> int:
        if self.config.mtu:
            return self.config.mtu
        return DEFAULT_UPLINK_MTU - TUNNEL_OVERHEAD[self.config.tunnel_type]

    def _bridge_settings(self) -> BridgeSettings:
        return BridgeSettings(
            name=self.config.bridge,
            datapath_type=self.config.datapath_type,
            tunnel_type=self.config.tunnel_type,
            mtu=self.pod_mtu,
        )

    def _previous_round(self) -> int | None:
        assert self.ovsdb is not None
        value = self.ovsdb.get_bridge_external_id(self.config.bridge, keys.BRIDGE_ROUND)
        return int(value) if value and value.isdigit() else None

    def _start_switch(self) -> None:
        mgmt = Path(self.config.ovs_rundir) / f"{self.config.bridge}.mgmt"
        self.switch = Switch(mgmt)
        self.switch.start()
        self.switch.wait_connected(30)
        # Leftovers of a start that crashed with this same round number.
        self.switch.delete_by_cookie(*round_filter(self.round))
        self.switch.replace_flows("pipeline", skeleton_flows(self.round))
        self.gates.set("openflow")
        # ovs-vswitchd's own routes: now, and after each restart of it (it forgets them).
        self._add_ovs_routes()
        self.switch.on_connect.append(self._add_ovs_routes)

    def _add_ovs_routes(self) -> None:
        routes = parse_routes(self.config.ovs_routes)
        try:
            add_routes(self.config.ovs_rundir, routes)
        except VswitchdError as err:
            log.error("ovs-vswitchd routes not added; tunnels may not work: %s", err)
        else:
            if routes:
                log.info("ovs-vswitchd routes added count=%d", len(routes))

    def _start_source(self) -> None:
        if self.config.source == "kubernetes":
            self.source = KubeSource(self.config, self.store)
        else:
            self.source = ManifestsSource(self.config, self.store)
        self.source.start()
        if not self.source.wait_synced(self.sync_timeout):
            raise AgentError(f"source not synced within {self.sync_timeout:.0f}s")
        self.gates.set("source")

    def _install_node(self, node: LocalNode) -> None:
        assert self.switch is not None
        self._in_node_netns(
            lambda: ensure_gateway_address(
                GATEWAY_PORT, node.gateway_ip, node.pod_cidr, self.pod_mtu
            )
        )
        cookie = Cookie(self.round, Category.NODE, 0).value
        self.switch.replace_flows(f"node/{self.config.node_name}", gateway_flows(node, cookie))
        self.gates.set("node")

    def _start_pod_network(self, node: LocalNode) -> None:
        """Rebuild the pods from OVS, reinstall their flows in this round, serve CNI."""
        assert self.switch is not None and self.ovsdb is not None
        pod_flows = SwitchPodFlows(self.switch, node, self.round)
        self.podnet = PodNetwork(
            PodNetConfig(
                bridge=self.config.bridge,
                mtu=self.pod_mtu,
                tx_checksum_off=self.config.datapath_type == "netdev",
            ),
            self.ovsdb,
            pod_flows,
            HostLocalIpam(node.pod_cidr, data_dir=self.config.ipam_data_dir),
        )
        restored = self.podnet.restore()
        self._start_policies(self.podnet)
        for iface in self.podnet.store.all():
            pod_flows.install_pod(iface)
        pod_flows.listeners.append(self._local_pod_changed)
        log.info("pods restored from ovsdb count=%d", restored)
        dispatcher = CniDispatcher(MeteredBackend(self.podnet), self.network_ready)
        netns_path = f"/run/netns/{self.netns}" if self.netns else None
        self.cni_server = CniServer(self.config.cni_socket, dispatcher, netns=netns_path)
        self.cni_server.start()

    def _start_policies(self, podnet: PodNetwork) -> None:
        """NetworkPolicy for the restored pods is in before any pod flow of this round."""
        assert self.switch is not None
        self.policies = PolicyReconciler(
            self.store,
            self.switch,
            self.round,
            self.config.node_name,
            lambda: local_pods_of(podnet.store.all()),
        )
        self.policies.start()

    def _local_pod_changed(self, iface: PodInterface, present: bool) -> None:
        """A CNI ADD returns only once the pod's policies are realised (no unprotected start)."""
        assert self.policies is not None
        if present:
            self._wait_for_pod_object(iface)
        self.policies.local_pod_changed(iface, present)
        if not self.policies.wait_idle(POLICY_WAIT):
            log.warning("policies for %s not realised within %.0fs", iface.owner, POLICY_WAIT)
        # A pod attached or detached is a change the bridge is now in step with, as much as a
        # change of the source: `plumbctl status` shows it as the last sync.
        self.sync_clock.mark()

    def _wait_for_pod_object(self, iface: PodInterface) -> None:
        """Policies select pods by labels: a pod whose object has not reached the store yet
        could not be isolated, so its ADD waits for it (bounded; the runtime created the pod
        object before calling CNI, so it is normally already here)."""
        deadline = time.monotonic() + POLICY_WAIT
        if not iface.pod_namespace or not iface.pod_name:
            return  # not a Kubernetes pod (podman sends a name, no namespace): nothing to select
        while self.store.get("Pod", iface.pod_namespace, iface.pod_name) is None:
            if time.monotonic() > deadline:
                log.warning(
                    "pod object %s not in the store; policies may not select it yet", iface.owner
                )
                return
            time.sleep(0.02)

    def _start_nodes(self, node: LocalNode) -> None:
        """Peer nodes' flows (and routes) in this round, before the old round goes."""
        assert self.switch is not None
        self.nodes = NodeReconciler(
            self.store,
            self.switch,
            node,
            self.config.node_name,
            self.config.tunnel_type,
            self.round,
            netns=self.netns,
        )
        self.nodes.start()
        # Flows go in before routes: a route that keeps failing only delays this wait.
        if not self.nodes.wait_idle(self.sync_timeout):
            log.warning("peer nodes not all reconciled within %.0fs; retrying", self.sync_timeout)

    def _start_sync_clock(self) -> None:
        """The last-sync time on /metrics: now (once the reconcilers are idle), then after each
        change of the source. Its handler comes after the reconcilers' own (see SyncClock)."""
        assert self.policies is not None and self.nodes is not None
        self.sync_clock.start([self.policies.wait_idle, self.nodes.wait_idle])
        self.store.add_handler(self.sync_clock.changed)
        self.sync_clock.mark()

    def _finish_round(self, previous: int | None) -> None:
        assert self.switch is not None and self.ovsdb is not None
        if previous is not None and previous != self.round:
            self.switch.delete_by_cookie(*round_filter(previous))
        self.ovsdb.set_bridge_external_id(self.config.bridge, keys.BRIDGE_ROUND, str(self.round))

    def _in_node_netns(self, work: Callable[[], None]) -> None:
        if self.netns is None:
            work()
            return
        fd = open_netns(f"/run/netns/{self.netns}")
        try:
            in_netns(fd, work)
        finally:
            os.close(fd)


def local_node(store: Store, node_name: str, gateway_mac: str) -> LocalNode:
    """The local node's PodCIDR (first IPv4 of spec.podCIDRs) and its gateway address."""
    node = store.get("Node", "", node_name)
    if node is None:
        raise AgentError(f"node {node_name!r} not found in the source")
    spec = node.get("spec") or {}
    cidrs = list(spec.get("podCIDRs") or []) or [spec.get("podCIDR") or ""]
    ipv4 = [c for c in cidrs if c and ipaddress.ip_network(c, strict=False).version == 4]
    if not ipv4:
        raise AgentError(f"node {node_name!r} has no IPv4 PodCIDR yet")
    network = ipaddress.ip_network(ipv4[0], strict=False)
    return LocalNode(str(network), str(network.network_address + 1), gateway_mac)


def run(config: AgentConfig, stop: threading.Event) -> None:
    agent = Agent(config)
    try:
        agent.start()
        stop.wait()
    finally:
        agent.stop()


@click.command()
@click.option("--config", "config_path", type=click.Path(), default=None, help="YAML config.")
def main(config_path: str | None) -> None:
    """Run the Plumb node agent."""
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    setup_logging(config.log_level, config.log_format)
    install_signal_handlers()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    run(config, stop)
