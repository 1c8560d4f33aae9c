"""A lab cluster's lifecycle: `up` builds (or completes) the underlay, the nodes and their agents
and waits until every agent is ready; `down` removes everything a lab made, and nothing else.

A node is a network namespace `<lab>-nodeN` holding: `eth0`, one end of a veth whose other end
sits on the Linux bridge of the lab's underlay namespace; a private Open vSwitch (userspace
datapath); the node's underlay address, in tunnel modes on the internal port of an OVS bridge
`br-phy` that holds `eth0` (so the userspace tunnel code can route and ARP, see docs/lab.md; its
kernel routes kept out of ovs-vswitchd's sight and replaced by a route of ovs-vswitchd's own,
see hide_underlay_routes), in routed mode on `eth0` itself; and one plumb-agent reading the
lab's manifests directory. All files live under /var/run/plumb-lab/<lab>/.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import shutil
import socket
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

from lab import host
from lab.host import HostError
from lab.layout import (
    BRIDGE,
    HEALTH_PORT,
    PHYS_BRIDGE,
    UNDERLAY_MTU,
    UPLINK,
    LabLayout,
    LabSpec,
    LabSpecError,
    NodeLayout,
    node_cidr,
)
from lab.objects import ManifestsDir
from lab.ovs_sandbox import OvsSandbox, OvsSandboxError
from lab.pods import Kubelet, forget_all_pods, forget_pods_on

REPO_ROOT = Path(__file__).resolve().parents[1]
AGENT_TIMEOUT = 90.0
Progress = Callable[[str], None]
_AGENT_MAIN = "from controller.agent import main; main()"


class LabError(RuntimeError):
    """The lab cannot be brought to the requested state (the message says why)."""


def _quiet(_: str) -> None:
    pass


# --- spec --------------------------------------------------------------------------------------


def resolve_spec(
    layout: LabLayout, nodes: int | None, encap: str | None, pod_cidr: str | None
) -> LabSpec:
    """The spec `up` converges to: flags given, else the running lab's, else the defaults.

    A running lab can grow or shrink (`--nodes`), but not change its encap or pod CIDR: every
    agent and pod would have to be rebuilt, which is what `down` then `up` is for.
    """
    current = layout.read_spec()
    base = current or LabSpec(name=layout.name)
    spec = LabSpec(
        name=layout.name,
        nodes=base.nodes if nodes is None else nodes,
        encap=base.encap if encap is None else encap,
        pod_cidr=base.pod_cidr if pod_cidr is None else pod_cidr,
    )
    if current is not None:
        for flag, old, new in (
            ("--encap", current.encap, spec.encap),
            ("--pod-cidr", current.pod_cidr, spec.pod_cidr),
        ):
            if old != new:
                raise LabSpecError(
                    f"lab {layout.name} runs with {flag} {old}; run `plumbctl lab down --name "
                    f"{layout.name}` first to rebuild it with {new}"
                )
    return spec


# --- up ----------------------------------------------------------------------------------------


def up(
    name: str,
    nodes: int | None = None,
    encap: str | None = None,
    pod_cidr: str | None = None,
    progress: Progress = _quiet,
    root: Path | None = None,
    agents: bool = True,
) -> LabSpec:
    """Bring lab `name` to the spec and return once every agent is ready. Idempotent.

    `agents=False` builds only the network (namespaces, underlay, OVS with br-phy): the floor
    the datapath benchmark measures against, and the ground the underlay tests stand on."""
    layout = LabLayout(name) if root is None else LabLayout(name, root)
    spec = resolve_spec(layout, nodes, encap, pod_cidr)
    layout.dir.mkdir(parents=True, exist_ok=True)
    layout.spec_file.write_text(spec.to_json())
    ensure_underlay(layout)
    progress(f"underlay {layout.underlay_netns} ready")
    for index in existing_node_indexes(layout):
        if index > spec.nodes:
            remove_node(layout, layout.node(index))
            progress(f"node{index} removed")
    write_cni_conflist(layout)
    manifests = ManifestsDir(layout.manifests_dir)
    for index in range(1, spec.nodes + 1):
        manifests.write(node_object(spec, layout.node(index)))
    nodes_ = [layout.node(i) for i in range(1, spec.nodes + 1)]
    with ThreadPoolExecutor(max_workers=min(8, len(nodes_))) as pool:
        list(pool.map(lambda n: _ensure_node(layout, spec, n, agents, progress), nodes_))
    if spec.encap != "none":
        teach_tunnel_neighbours(nodes_)
    if agents:
        wait_agents_ready(nodes_, progress)
        for ref in Kubelet(layout).ensure_servers():
            progress(f"pod/{ref}: server restarted")
    return spec


def teach_tunnel_neighbours(nodes: list[NodeLayout]) -> None:
    """Tell every node's OVS its peers' underlay MACs. The userspace tunnel code resolves a
    remote endpoint through its own neighbour cache, and drops the packet that finds the cache
    cold (it sends an ARP instead): the first SYN to a new node would be lost, costing a probe
    a one-second retransmission. Entries stay while they are used; ARP replies refresh them."""
    for node in nodes:
        ovs = node_ovs(node)
        for peer in nodes:
            if peer is not node:
                ovs.appctl("tnl/neigh/set", PHYS_BRIDGE, peer.address, peer.phys_mac)


def _ensure_node(
    layout: LabLayout, spec: LabSpec, node: NodeLayout, agent: bool, progress: Progress
) -> None:
    ensure_node_network(layout, node)
    ensure_node_ovs(node, spec.encap)
    progress(f"{node.name}: namespace {node.netns}, underlay {node.address}, OVS up")
    write_agent_config(layout, spec, node)
    if agent:
        ensure_agent(node)
        progress(f"{node.name}: agent started")


def ensure_underlay(layout: LabLayout) -> None:
    """The underlay: a namespace holding one Linux bridge that every node's veth joins."""
    netns, bridge = layout.underlay_netns, layout.underlay_bridge
    host.ensure_netns(netns)
    if not host.link_exists(netns, bridge):
        host.run(["ip", "-n", netns, "link", "add", bridge, "type", "bridge"])
    host.run(["ip", "-n", netns, "link", "set", bridge, "up"])


def ensure_node_network(layout: LabLayout, node: NodeLayout) -> None:
    """The node's namespace, forwarding on (routed mode and the gateway need it), its underlay
    veth `eth0` joined to the underlay bridge."""
    host.ensure_netns(node.netns)
    host.sysctl(node.netns, "net.ipv4.ip_forward", "1")
    host.ensure_veth(node.netns, UPLINK, layout.underlay_netns, node.underlay_port, UNDERLAY_MTU)
    port, bridge = node.underlay_port, layout.underlay_bridge
    host.run(["ip", "-n", layout.underlay_netns, "link", "set", port, "master", bridge])


def node_ovs(node: NodeLayout) -> OvsSandbox:
    return OvsSandbox(node.ovs_rundir, netns=node.netns)


def ensure_node_ovs(node: NodeLayout, encap: str) -> OvsSandbox:
    """The node's OVS, and the node's underlay address where the encap needs it: in tunnel
    modes on `br-phy`, an OVS bridge holding the uplink (userspace tunnels route and resolve
    neighbours only through addresses on OVS bridges); in routed mode on the uplink itself,
    since the kernel routes between nodes."""
    ovs = node_ovs(node)
    ovs.start()
    address = f"{node.address}/{node.underlay_prefixlen}"
    if encap == "none":
        host.ensure_address(node.netns, UPLINK, address)
        return ovs
    ovs.vsctl(
        "--may-exist", "add-br", PHYS_BRIDGE,
        "--", "set", "bridge", PHYS_BRIDGE, "datapath_type=netdev",
        f"other_config:hwaddr={node.phys_mac}",
        "--", "--may-exist", "add-port", PHYS_BRIDGE, UPLINK,
    )  # fmt: skip
    quiet_port(node.netns, UPLINK)
    if UNDERLAY_ROUTES == "kernel":
        host.ensure_address(node.netns, PHYS_BRIDGE, address)
        return ovs
    hide_underlay_routes(node)
    route_underlay(node, ovs)
    return ovs


# How a tunnel node's underlay address is routed. "hidden" (the default): the kernel's routes to
# and for the address name no device that ovs-vswitchd caches (see hide_underlay_routes), and
# ovs-vswitchd routes the underlay by a route of its own (route_underlay). "kernel": the address
# on br-phy as is, its kernel routes cached by ovs-vswitchd, which loses a packet now and then
# whenever a link comes or goes on the node (docs/reliability.md); kept to measure against.
UNDERLAY_ROUTES = os.environ.get("PLUMB_LAB_UNDERLAY_ROUTES", "hidden")
_NEXTHOP_ID = "1"  # the underlay's nexthop object in the node's namespace


def hide_underlay_routes(node: NodeLayout) -> None:
    """The node's address on br-phy, with no kernel route that ovs-vswitchd 3.1 reads naming
    br-phy: on every link added to or removed from the namespace (each pod's veth) it flushes
    the routes it cached from the kernel and reads them again, and flushing a route through
    br-phy also drops br-phy's entries from the tunnel-termination map (`tnl/ports/show -v`)
    until a route through br-phy is read again; a revalidator translating a flow meanwhile
    sends arriving Geneve to br-phy's kernel and tunnelled packets nowhere, and the datapath
    keeps that until the next revalidation. So:

    - the address on br-phy without its prefix route (`noprefixroute`), IPv6 off on br-phy (no
      link-local address, no fe80::/64 route);
    - the kernel's local route for it through `lo` (the same address on `lo`) rather than
      br-phy, so the kernel still takes and answers (ARP included) what is sent to it;
    - the kernel's route to the underlay through a nexthop object, which the kernel reports
      without an output interface (`nexthop_compat_mode` 0) and ovs-vswitchd therefore skips.

    The kernel still reaches the other nodes and is reached by them; only ovs-vswitchd no
    longer sees these routes (route_underlay gives it its own)."""
    netns, dev = node.netns, PHYS_BRIDGE
    host.sysctl(netns, f"net.ipv6.conf.{dev}.disable_ipv6", "1")
    host.sysctl(netns, "net.ipv4.nexthop_compat_mode", "0")
    host.ensure_address(netns, "lo", f"{node.address}/32")
    if node.address not in host.run(["ip", "-n", netns, "-4", "-o", "addr", "show", dev]):
        cidr = f"{node.address}/{node.underlay_prefixlen}"
        host.run(["ip", "-n", netns, "addr", "add", cidr, "dev", dev, "noprefixroute"])
    host.run(["ip", "-n", netns, "link", "set", dev, "up"])
    subnet = underlay_subnet(node)
    # Whatever the kernel made on its own through br-phy (the local route, a prefix route).
    host.run(["ip", "-n", netns, "route", "del", "table", "local", "local", node.address,
              "dev", dev], check=False)  # fmt: skip
    host.run(["ip", "-n", netns, "route", "del", subnet, "dev", dev], check=False)
    host.run(["ip", "-n", netns, "nexthop", "replace", "id", _NEXTHOP_ID, "dev", dev])
    host.run(["ip", "-n", netns, "route", "replace", subnet, "nhid", _NEXTHOP_ID,
              "src", node.address])  # fmt: skip


def route_underlay(node: NodeLayout, ovs: OvsSandbox | None = None, timeout: float = 5.0) -> None:
    """ovs-vswitchd's own route to the underlay through br-phy (`ovs/route/add`): a user route,
    which its route-table resets leave alone, and whose insertion puts br-phy's address in the
    tunnel-termination map. Added once ovs-vswitchd no longer caches a kernel route through
    br-phy (flushing one would take br-phy out of the map again). ovs-vswitchd forgets it when
    it restarts; the node's agent adds it again then (its `ovs_routes`, underlay_ovs_route).
    No-op in "kernel" mode."""
    route = underlay_ovs_route(node)
    if not route:
        return
    ovs = ovs or node_ovs(node)
    deadline = time.monotonic() + timeout
    while _cached_routes_through(ovs, PHYS_BRIDGE):
        if time.monotonic() > deadline:
            raise LabError(
                f"{node.name}: ovs-vswitchd still caches a kernel route through {PHYS_BRIDGE}:\n"
                + ovs.appctl("ovs/route/show")
            )
        time.sleep(0.05)
    ovs.appctl("ovs/route/add", *route.split())


def _cached_routes_through(ovs: OvsSandbox, dev: str) -> list[str]:
    return [
        line
        for line in ovs.appctl("ovs/route/show").splitlines()
        if line.startswith("Cached:") and f" dev {dev} " in f"{line} "
    ]


def quiet_port(netns: str, ifname: str) -> None:
    """Keep the kernel off a link that OVS owns: the kernel would otherwise answer ARP for the
    node's address on it (with the link's own MAC, a second, wrong reply), forward what it
    receives there, and chatter IPv6 neighbour discovery."""
    host.sysctl(netns, f"net.ipv4.conf.{ifname}.arp_ignore", "8")
    host.sysctl(netns, f"net.ipv4.conf.{ifname}.forwarding", "0")
    host.sysctl(netns, f"net.ipv6.conf.{ifname}.disable_ipv6", "1")


def node_object(spec: LabSpec, node: NodeLayout) -> dict[str, Any]:
    """The Node as a kubelet would register it: PodCIDR, InternalIP = its underlay address."""
    cidr = node_cidr(spec.pod_cidr, node.index)
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": node.name, "labels": {"kubernetes.io/hostname": node.name}},
        "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": node.address},
                {"type": "Hostname", "address": node.name},
            ]
        },
    }


def write_cni_conflist(layout: LabLayout) -> Path:
    """The network config every pod is added with: no ipam section, so the agent reserves
    addresses itself from the node's PodCIDR (in host-local's format, under ipam_dir)."""
    conf = {
        "cniVersion": "1.0.0",
        "name": "plumb",
        "plugins": [{"type": "plumb"}],
    }
    path = layout.dir / "net.d" / "10-plumb.conflist"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(conf, indent=2) + "\n")
    return path


def agent_config(layout: LabLayout, spec: LabSpec, node: NodeLayout) -> dict[str, Any]:
    return {
        "node_name": node.name,
        "source": "manifests",
        "manifests_dir": str(layout.manifests_dir),
        "bridge": BRIDGE,
        "datapath_type": "netdev",
        "tunnel_type": spec.encap,
        "ovs_rundir": str(node.ovs_rundir),
        "cni_socket": str(node.cni_socket),
        "ipam_data_dir": str(node.ipam_dir),
        "transport_interface": UPLINK if spec.encap == "none" else PHYS_BRIDGE,
        "node_address": node.address,
        "health_bind_address": f"127.0.0.1:{HEALTH_PORT}",
        "log_level": "info",
        # ovs-vswitchd's own route to the underlay (route_underlay), which the agent adds again
        # whenever ovs-vswitchd restarts and forgets it.
        "ovs_routes": underlay_ovs_route(node) if spec.encap != "none" else "",
    }


def underlay_ovs_route(node: NodeLayout) -> str:
    """`PREFIX BRIDGE`: the underlay through br-phy, as the agent's `ovs_routes` takes it; empty
    when the lab leaves ovs-vswitchd the kernel's routes (PLUMB_LAB_UNDERLAY_ROUTES=kernel)."""
    if UNDERLAY_ROUTES == "kernel":
        return ""
    return f"{underlay_subnet(node)} {PHYS_BRIDGE}"


def underlay_subnet(node: NodeLayout) -> str:
    """The underlay's prefix, e.g. `172.30.0.0/24`."""
    return str(ipaddress.IPv4Network(f"{node.address}/{node.underlay_prefixlen}", strict=False))


def write_agent_config(layout: LabLayout, spec: LabSpec, node: NodeLayout) -> None:
    node.dir.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(agent_config(layout, spec, node), sort_keys=False)
    if not node.config_file.exists() or node.config_file.read_text() != text:
        node.config_file.write_text(text)


def agent_pid(node: NodeLayout) -> int | None:
    return host.live_pid(node.agent_pidfile, str(node.config_file))


def ensure_agent(node: NodeLayout) -> int:
    """Start the node's agent inside its namespace unless it runs; its PID."""
    pid = agent_pid(node)
    if pid is not None:
        return pid
    cmd = host.in_ns(
        node.netns, sys.executable, "-c", _AGENT_MAIN, "--config", str(node.config_file)
    )
    env = {**os.environ, "PYTHONPATH": _pythonpath()}
    return host.spawn(cmd, node.agent_log, node.agent_pidfile, env).pid


def stop_agent(node: NodeLayout) -> None:
    pid = agent_pid(node)
    if pid is not None:
        host.terminate(pid, str(node.config_file))
    node.agent_pidfile.unlink(missing_ok=True)


def restart_agent(node: NodeLayout, progress: Progress = _quiet) -> None:
    """Stop and start one node's agent, and wait until it is ready again."""
    stop_agent(node)
    ensure_agent(node)
    wait_agents_ready([node], progress)


def _pythonpath() -> str:
    """The repository first, so the lab runs the agent of the checkout it was started from."""
    rest = os.environ.get("PYTHONPATH", "")
    return f"{REPO_ROOT}:{rest}" if rest else str(REPO_ROOT)


def agent_ready(node: NodeLayout) -> bool:
    """GET /readyz on the agent's health port, from inside the node's namespace."""
    try:
        sock = host.socket_in(node.netns, socket.AF_INET, socket.SOCK_STREAM)
    except OSError:
        return False
    with sock:
        sock.settimeout(1.0)
        try:
            sock.connect(("127.0.0.1", HEALTH_PORT))
            sock.sendall(b"GET /readyz HTTP/1.0\r\nHost: plumb\r\n\r\n")
            reply = b""
            while chunk := sock.recv(4096):  # to the end: a reset would be logged by the agent
                reply += chunk
            return reply.startswith((b"HTTP/1.0 200", b"HTTP/1.1 200"))
        except OSError:
            return False


def wait_agents_ready(
    nodes: list[NodeLayout], progress: Progress = _quiet, timeout: float = AGENT_TIMEOUT
) -> None:
    """Return when every node's agent answers /readyz with 200; LabError (with the log's
    tail) when one exits or the timeout passes."""
    waiting = {n.name: n for n in nodes}
    deadline = time.monotonic() + timeout
    while waiting:
        for name, node in list(waiting.items()):
            if agent_ready(node):
                del waiting[name]
                progress(f"{name}: agent ready")
            elif not _agent_running(node):
                raise LabError(f"{name}: the agent exited\n{_log_tail(node.agent_log)}")
        if waiting and time.monotonic() > deadline:
            node = next(iter(waiting.values()))
            raise LabError(
                f"{', '.join(waiting)}: agent not ready within {timeout:g}s\n"
                f"{_log_tail(node.agent_log)}"
            )
        if waiting:
            time.sleep(0.05)


def _agent_running(node: NodeLayout) -> bool:
    """Whether the agent's recorded process is alive; no command-line check here, since a
    process that has just been started may be between `ip netns exec` and Python."""
    try:
        return host.pid_alive(int(node.agent_pidfile.read_text()))
    except (OSError, ValueError):
        return False


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"(no log at {path})"
    return f"last lines of {path}:\n" + "\n".join(text[-lines:])


# --- down --------------------------------------------------------------------------------------


def existing_node_indexes(layout: LabLayout) -> list[int]:
    """Nodes the lab has: its node directories and its `<lab>-nodeN` namespaces."""
    found: set[int] = set()
    if layout.dir.is_dir():
        for entry in layout.dir.iterdir():
            if match := re.fullmatch(r"node([1-9][0-9]*)", entry.name):
                found.add(int(match.group(1)))
    pattern = re.compile(rf"{re.escape(layout.name)}-node([1-9][0-9]*)")
    if host.NETNS_DIR.is_dir():
        for entry in host.NETNS_DIR.iterdir():
            if match := pattern.fullmatch(entry.name):
                found.add(int(match.group(1)))
    return sorted(found)


def _floor_namespaces(layout: LabLayout) -> list[str]:
    """Namespaces a benchmark floor (lab.floor) left behind, if it was interrupted."""
    pattern = re.compile(rf"{re.escape(layout.name)}-floor[0-9]+")
    if not host.NETNS_DIR.is_dir():
        return []
    return [e.name for e in host.NETNS_DIR.iterdir() if pattern.fullmatch(e.name)]


def remove_node(layout: LabLayout, node: NodeLayout) -> None:
    """A node and everything on it: its pods, agent, OVS, namespace, Node object and files."""
    forget_pods_on(layout, node.name)
    ManifestsDir(layout.manifests_dir).remove("Node", "", node.name)
    stop_agent(node)
    _cleanup_ovs(node)
    host.delete_netns(node.netns)  # takes eth0 and, with it, the underlay's end of the veth
    shutil.rmtree(node.dir, ignore_errors=True)


def _cleanup_ovs(node: NodeLayout) -> None:
    ovs = node_ovs(node)
    with contextlib.suppress(OvsSandboxError):
        ovs.cleanup()
    if ovs.pid("ovs-vswitchd") or ovs.pid("ovsdb-server"):
        raise LabError(f"{node.name}: OVS in {node.ovs_rundir} would not stop")


def down(name: str, progress: Progress = _quiet, root: Path | None = None) -> bool:
    """Remove lab `name` entirely; False if there was nothing to remove."""
    layout = LabLayout(name) if root is None else LabLayout(name, root)
    indexes = existing_node_indexes(layout)
    found = bool(indexes) or layout.dir.exists() or host.netns_exists(layout.underlay_netns)
    forget_all_pods(layout)

    def remove(index: int) -> None:
        remove_node(layout, layout.node(index))
        progress(f"node{index} removed")

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(remove, indexes))
    try:
        for netns in _floor_namespaces(layout):
            host.delete_netns(netns)
        host.delete_netns(layout.underlay_netns)
    except HostError as exc:
        raise LabError(str(exc)) from exc
    shutil.rmtree(layout.dir, ignore_errors=True)
    return found
