"""Where `plumbctl` inspection looks, and the I/O of looking: a node's OVS (ovs-ofctl, ovs-appctl,
OVSDB) and agent (/readyz, /metrics), and the cluster's objects.

A node is found either in a lab (`--lab NAME --node nodeN`, through `lab.layout`) or on this
machine (`--ovs-rundir`, `--bridge`, `--health`). The cluster's objects (pods, namespaces,
NetworkPolicies, nodes) come from the lab's manifests directory; on a plain node, from
`--manifests DIR` or `--kubeconfig FILE` when given (`plumbctl.objects`; the other nodes are then
known by name, address and PodCIDR, but only this one's OVS is looked at), else only what its
OVSDB says of its own pods is known. Everything pure lives in `flows.annotate`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import os
import socket
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controller.nodes import peer_from_node
from flows.annotate import Names
from flows.fields import GATEWAY_OFPORT, TUNNEL_OFPORT
from flows.node import node_object_id
from lab.layout import BRIDGE, HEALTH_PORT, LabLayout, LabSpecError, node_cidr
from lab.objects import ManifestsDir
from ovsdb import keys
from ovsdb.client import OvsdbClient, PortInfo
from plumbctl.objects import ClusterObjects

DEFAULT_RUNDIR = Path("/var/run/openvswitch")
DEFAULT_HEALTH = f"127.0.0.1:{HEALTH_PORT}"
TOOL_TIMEOUT = 10.0

Obj = dict[str, Any]


class InspectError(RuntimeError):
    """Something to inspect is missing or a tool failed (the message says which)."""


@dataclass(frozen=True)
class PodPort:
    """A pod attached to a node's bridge, as its OVS port's external_ids say."""

    namespace: str
    name: str
    ofport: int
    ip: str  # without prefix length
    mac: str
    port: str  # the OVS port name

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class Node:
    """One node's OVS and agent. `name` is "" for the local node outside a lab."""

    name: str
    rundir: Path
    bridge: str = BRIDGE
    netns: str | None = None
    health: str = DEFAULT_HEALTH
    address: str = ""  # underlay address
    pod_cidr: str = ""

    @property
    def label(self) -> str:
        return self.name or "local"

    @property
    def mgmt(self) -> Path:
        return self.rundir / f"{self.bridge}.mgmt"

    @property
    def db_remote(self) -> str:
        return f"unix:{self.rundir / 'db.sock'}"

    # --- OpenFlow ------------------------------------------------------------------------------

    def ofctl(self, *args: str) -> str:
        """ovs-ofctl -O OpenFlow15 --names on the bridge's management socket (needs no netns)."""
        command, *rest = args
        return _run(["ovs-ofctl", "-O", "OpenFlow15", "--names", command, str(self.mgmt), *rest])

    def dump_flows(self, flow_filter: str = "") -> str:
        return self.ofctl("dump-flows", *([flow_filter] if flow_filter else []))

    def appctl(self, *args: str) -> str:
        return _run(["ovs-appctl", *self._appctl_target(), *args], env=self._env())

    def _appctl_target(self) -> list[str]:
        # Private OVS (the lab's) names its control socket plainly; a packaged one adds its PID,
        # which ovs-appctl finds itself from the pidfile in OVS_RUNDIR.
        ctl = self.rundir / "ovs-vswitchd.ctl"
        return ["-t", str(ctl)] if ctl.exists() else ["-t", "ovs-vswitchd"]

    def _env(self) -> dict[str, str]:
        return {**os.environ, "OVS_RUNDIR": str(self.rundir)}

    def trace(self, flow: str, ct_next: int = 4) -> str:
        """ofproto/trace of `flow`, each conntrack recirculation resumed as a new connection."""
        ct_args = [a for _ in range(ct_next) for a in ("--ct-next", "trk,new")]
        return self.appctl("ofproto/trace", self.bridge, flow, *ct_args)

    def ovs_version(self) -> str:
        return self.appctl("version").strip()

    # --- OVSDB ---------------------------------------------------------------------------------

    @contextlib.contextmanager
    def ovsdb(self) -> Iterator[OvsdbClient]:
        if not (self.rundir / "db.sock").exists():
            raise InspectError(f"{self.label}: no OVSDB socket in {self.rundir}")
        client = OvsdbClient(self.db_remote, timeout=5)
        try:
            yield client
        finally:
            client.close()

    # --- the agent -----------------------------------------------------------------------------

    def http_get(self, path: str, timeout: float = 2.0) -> tuple[int, str]:
        """GET on the agent's health server, from the node's namespace; (0, reason) if down."""
        host, _, port = self.health.rpartition(":")
        try:
            sock = self._socket()
        except OSError as exc:
            return 0, f"cannot open a socket in {self.netns}: {exc}"
        with sock:
            sock.settimeout(timeout)
            try:
                sock.connect((host.strip("[]"), int(port)))
                sock.sendall(f"GET {path} HTTP/1.0\r\nHost: plumb\r\n\r\n".encode())
                data = _read_all(sock)
            except OSError as exc:
                return 0, f"agent not reachable at {self.health}: {exc}"
        head, _, body = data.decode(errors="replace").partition("\r\n\r\n")
        status = head.split(" ", 2)
        return (int(status[1]) if len(status) > 1 and status[1].isdigit() else 0), body

    def _socket(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.health.rpartition(":")[0] else socket.AF_INET
        if self.netns is None:
            return socket.socket(family, socket.SOCK_STREAM)
        from lab.host import socket_in

        return socket_in(self.netns, family, socket.SOCK_STREAM)


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def _run(cmd: list[str], env: Mapping[str, str] | None = None) -> str:
    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=TOOL_TIMEOUT, env=env, check=False
        )
    except FileNotFoundError as exc:
        raise InspectError(f"{cmd[0]} not found: apt-get install openvswitch-switch") from exc
    except subprocess.TimeoutExpired as exc:
        raise InspectError(f"{' '.join(cmd[:3])}: no answer in {TOOL_TIMEOUT:g}s") from exc
    if done.returncode != 0:
        raise InspectError(
            f"{cmd[0]} {cmd[-1] if len(cmd) < 6 else ' '.join(cmd[1:4])}: "
            f"{done.stderr.strip() or done.stdout.strip()}"
        )
    return done.stdout


def pod_ports(ports: list[PortInfo]) -> list[PodPort]:
    """The pod ports among a bridge's ports (their external_ids name the pod)."""
    out = []
    for port in ports:
        ids = port.external_ids
        if ids.get(keys.PORT_TYPE) != keys.PORT_TYPE_POD or port.ofport <= 0:
            continue
        out.append(
            PodPort(
                namespace=ids.get(keys.POD_NAMESPACE, ""),
                name=ids.get(keys.POD_NAME, ""),
                ofport=port.ofport,
                ip=ids.get(keys.IP, "").split("/")[0],
                mac=ids.get(keys.MAC, ""),
                port=port.name,
            )
        )
    return out


@dataclass
class NodeState:
    """What one node's OVSDB says: its pods, gateway MAC and the agent's round."""

    node: Node
    pods: list[PodPort] = field(default_factory=list)
    gateway_mac: str = ""
    round: int | None = None
    tunnel: bool = False  # the bridge has the tunnel port (else routed, or no peers)

    def pod(self, ref: str) -> PodPort | None:
        return next((p for p in self.pods if p.ref == ref), None)


def read_node_state(node: Node) -> NodeState:
    with node.ovsdb() as db:
        try:
            ports = db.list_ports(node.bridge)
            raw_round = db.get_bridge_external_id(node.bridge, keys.BRIDGE_ROUND)
        except Exception as exc:
            raise InspectError(f"{node.label}: {exc}") from exc
    gateway = next((p for p in ports if p.ofport == GATEWAY_OFPORT), None)
    return NodeState(
        node,
        pod_ports(ports),
        gateway.mac_in_use if gateway else "",
        int(raw_round) if raw_round and raw_round.isdigit() else None,
        any(p.ofport == TUNNEL_OFPORT for p in ports),
    )


# --- the cluster -------------------------------------------------------------------------------


@dataclass
class Cluster:
    """The nodes to inspect and the objects known of the cluster (in a lab, or on a node given
    --manifests or --kubeconfig; else none). `peers` are the other nodes the objects name: known
    by name, address and PodCIDR, their OVS out of reach."""

    nodes: list[Node]
    pods: list[Obj] = field(default_factory=list)
    namespaces: list[Obj] = field(default_factory=list)
    policies: list[Obj] = field(default_factory=list)
    lab: str = ""
    peers: list[Node] = field(default_factory=list)
    objects_from: str = ""  # where the objects came from: a lab, a directory, a kubeconfig
    _states: dict[str, NodeState] = field(default_factory=dict)

    @property
    def has_objects(self) -> bool:
        return bool(self.lab or self.objects_from)

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        if any(peer.name == name for peer in self.peers):
            here = ", ".join(n.label for n in self.nodes)
            raise InspectError(
                f"node {name!r} is not this one ({here}): run plumbctl on {name} to look at it"
            )
        known = ", ".join(n.name for n in self.nodes) or "none"
        raise InspectError(f"no node {name!r} (known: {known})")

    def local_node_of(self, ref: str) -> Node | None:
        """The inspectable node a pod runs on; None when it runs on a peer (or nowhere known)."""
        node_name = ((self.pod_object(ref) or {}).get("spec") or {}).get("nodeName")
        if node_name:
            return next((n for n in self.nodes if n.name == node_name), None)
        return next((n for n in self.nodes if self.state(n).pod(ref) is not None), None)

    def peer_of_address(self, ip: str) -> Node | None:
        """The node, inspectable or not, whose PodCIDR holds `ip`."""
        address = ipaddress.IPv4Address(ip)
        for node in (*self.nodes, *self.peers):
            if node.pod_cidr and address in ipaddress.IPv4Network(node.pod_cidr):
                return node
        return None

    def state(self, node: Node) -> NodeState:
        """The node's OVSDB view, read once per command."""
        if node.label not in self._states:
            self._states[node.label] = read_node_state(node)
        return self._states[node.label]

    def pod_object(self, ref: str) -> Obj | None:
        for pod in self.pods:
            meta = pod.get("metadata") or {}
            if f"{meta.get('namespace', 'default')}/{meta.get('name')}" == ref:
                return pod
        return None

    def pod_node(self, ref: str) -> Node:
        """The node a pod runs on: its object's spec.nodeName, else the node whose OVSDB has it."""
        obj = self.pod_object(ref)
        node_name = ((obj or {}).get("spec") or {}).get("nodeName")
        if node_name:
            return self.node(node_name)
        for node in self.nodes:
            if self.state(node).pod(ref) is not None:
                return node
        raise InspectError(f"no pod {ref} on any node")

    def pod_ip(self, ref: str) -> str:
        obj = self.pod_object(ref)
        ip = ((obj or {}).get("status") or {}).get("podIP")
        if ip:
            return str(ip)
        port = self.state(self.pod_node(ref)).pod(ref)
        if port is None or not port.ip:
            raise InspectError(f"pod {ref} has no address")
        return port.ip

    def pod_ips(self) -> dict[str, str]:
        out = {}
        for pod in self.pods:
            meta, status = pod.get("metadata") or {}, pod.get("status") or {}
            if status.get("podIP"):
                out[str(status["podIP"])] = f"{meta.get('namespace', 'default')}/{meta['name']}"
        return out

    def node_of_address(self, ip: str) -> Node | None:
        """The node whose PodCIDR holds `ip`."""
        address = ipaddress.IPv4Address(ip)
        for node in self.nodes:
            if node.pod_cidr and address in ipaddress.IPv4Network(node.pod_cidr):
                return node
        return None

    def names(
        self,
        node: Node,
        isolated: tuple[Mapping[str, list[str]], Mapping[str, list[str]]] = ({}, {}),
        rules: Mapping[int, str] | None = None,
    ) -> Names:
        """Names for annotating `node`'s flows and traces; `isolated` maps pods to the
        policies isolating them (ingress, egress), `rules` conjunction ids to rule names."""
        state = self.state(node)
        pod_ips = self.pod_ips()
        for other in self.nodes:
            if other.label in self._states:
                pod_ips.update({p.ip: p.ref for p in self._states[other.label].pods})
        pod_ips.update({p.ip: p.ref for p in state.pods})
        ingress, egress = isolated
        return Names(
            node=node.name,
            pods={p.ofport: p.ref for p in state.pods},
            pod_ips=pod_ips,
            nodes={node_object_id(n.name): n.name for n in (*self.nodes, *self.peers) if n.name},
            node_addresses={n.address: n.name for n in (*self.nodes, *self.peers) if n.address},
            isolated_ingress=ingress,
            isolated_egress=egress,
            rules=rules or {},
            tunnel_ofport=TUNNEL_OFPORT,
            gateway_ofport=GATEWAY_OFPORT,
        )


def lab_cluster(name: str) -> Cluster:
    """A lab's nodes and objects (InspectError when no such lab is up)."""
    try:
        layout = LabLayout(name)
    except LabSpecError as exc:
        raise InspectError(str(exc)) from exc
    spec = layout.read_spec()
    if spec is None:
        raise InspectError(f"no lab {name!r} is up (plumbctl lab up --name {name})")
    nodes = []
    for index in range(1, spec.nodes + 1):
        n = layout.node(index)
        nodes.append(
            Node(
                name=n.name,
                rundir=n.ovs_rundir,
                netns=n.netns,
                address=n.address,
                pod_cidr=node_cidr(spec.pod_cidr, index),
            )
        )
    objects = ManifestsDir(layout.manifests_dir)
    return Cluster(
        nodes,
        pods=objects.list("Pod"),
        namespaces=objects.list("Namespace"),
        policies=objects.list("NetworkPolicy"),
        lab=name,
    )


def local_cluster(rundir: Path, bridge: str, health: str) -> Cluster:
    """This machine's node alone: what its OVSDB knows."""
    return Cluster([Node("", rundir, bridge, None, health)])


def node_cluster(
    rundir: Path,
    bridge: str,
    health: str,
    objects: ClusterObjects,
    node_name: str | None = None,
) -> Cluster:
    """This machine's node with the cluster's objects: the node is `node_name`, else the node
    its bridge's pods run on (their objects' spec.nodeName), else the only Node object."""
    local = Node("", rundir, bridge, None, health)
    name = node_name or _local_node_name(local, objects)
    peers = []
    for obj in objects.nodes:
        try:
            peer = peer_from_node(obj)
        except ValueError:
            peer = None
        meta_name = str((obj.get("metadata") or {}).get("name") or "")
        node = Node(
            meta_name,
            Path(),
            bridge,
            None,
            health,
            peer.address if peer else "",
            peer.pod_cidr if peer else "",
        )
        if meta_name == name:
            local = dataclasses.replace(node, rundir=rundir)
        else:
            peers.append(node)
    if not local.name:
        names = ", ".join(str((n.get("metadata") or {}).get("name")) for n in objects.nodes)
        raise InspectError(
            f"no Node object named {name!r} in {objects.origin} (Nodes: {names or 'none'})"
        )
    return Cluster(
        [local],
        pods=objects.pods,
        namespaces=objects.namespaces,
        policies=objects.policies,
        peers=peers,
        objects_from=objects.origin,
    )


def _local_node_name(local: Node, objects: ClusterObjects) -> str:
    on_bridge = {p.ref for p in read_node_state(local).pods}
    named = {
        str((pod.get("spec") or {}).get("nodeName"))
        for pod in objects.pods
        if _ref(pod) in on_bridge and (pod.get("spec") or {}).get("nodeName")
    }
    if len(named) == 1:
        return named.pop()
    if not named and len(objects.nodes) == 1:
        return str(objects.nodes[0]["metadata"]["name"])
    found = f"its pods name nodes {', '.join(sorted(named))}" if named else "it has no pods"
    raise InspectError(f"which node is this? {found}: give --node NAME")


def _ref(obj: Obj) -> str:
    meta = obj.get("metadata") or {}
    return f"{meta.get('namespace') or 'default'}/{meta.get('name')}"


def lab_exists(name: str) -> bool:
    try:
        return LabLayout(name).read_spec() is not None
    except (LabSpecError, OSError, ValueError):
        return False
