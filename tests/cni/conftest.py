"""A node for CNI tests: a private OVS (userspace datapath), a bridge, the node's IPAM with a temp
dataDir, the pod network and the CNI server in-process on a temp socket; calls go through the
REAL `plumb` executable (built from cni/shim/plumb.c) with the CNI environment and stdin, as
a runtime makes them.

The network config has no `ipam` section (the agent's own allocator) unless a test sets
`node.ipam_conf`; the `any_ipam` fixture runs a test with the allocator and with host-local.

Everything is named from one random prefix per test (netns, pods, containers, veths, bridge), and
torn down by those names; nothing else on the machine is touched.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

import pytest

from cni import executable
from cni.ipam import NodeIpam
from cni.netns import host_links_with_suffix, in_netns
from cni.podnet import PodInterface, PodNetConfig, PodNetwork
from cni.server import CniDispatcher, CniServer
from lab.cniruntime import CniRuntime, NetworkList, PluginAnswer, RuntimeConf, exec_plugin

REPO = Path(__file__).resolve().parents[2]
REFERENCE_DIR = "/usr/lib/cni"
NETWORK = "plumbnet"

pytestmark = pytest.mark.ovs


def _missing_prerequisites() -> str:
    if os.geteuid() != 0:
        return "needs root (network namespaces, veths, OVS)"
    for tool in ("ovsdb-server", "ovs-vswitchd", "ovs-vsctl", "ip", "cc"):
        if shutil.which(tool) is None and not os.path.exists(f"/usr/sbin/{tool}"):
            return f"{tool} not installed (scripts/setup.sh installs it)"
    if not os.path.exists(f"{REFERENCE_DIR}/host-local"):
        return "containernetworking-plugins (host-local) not installed"
    try:
        import lab.ovs_sandbox  # noqa: F401
        import ovsdb.client  # noqa: F401
    except ImportError as exc:
        return f"OVS helpers not available yet: {exc}"
    return ""


@pytest.fixture(scope="session")
def ovs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    reason = _missing_prerequisites()
    if reason:
        pytest.skip(reason)
    from lab.ovs_sandbox import OvsSandbox

    # AF_UNIX paths are limited to 108 bytes: keep the run directory short.
    rundir = tempfile.mkdtemp(prefix="plumb-cniovs-")
    sandbox = OvsSandbox(Path(rundir))
    sandbox.start()
    try:
        yield sandbox
    finally:
        sandbox.stop()
        sandbox.cleanup()
        shutil.rmtree(rundir, ignore_errors=True)


class FlowFault(Exception):
    """Injected by tests into the pod flow installer."""


class OfctlPodFlows:
    """A small real PodFlows for these tests (the agent's pipeline is the lead's): per pod, two
    flows on the real bridge (from the pod's port and MAC: NORMAL; to its MAC: its port),
    tagged with a cookie per ofport; installing again replaces them, as the protocol asks.
    Faults can be injected."""

    def __init__(self, ovs: Any, bridge: str) -> None:
        self.ovs = ovs
        self.bridge = bridge
        self.fail_install: Exception | None = None
        self.fail_remove: set[str] = set()  # container ids whose flows refuse to go
        self.installed: list[str] = []
        self._cookies: dict[str, str] = {}  # owner -> cookie of its flows

    @staticmethod
    def cookie(iface: PodInterface) -> str:
        return f"{0x7000_0000_0000_0000 | iface.ofport:#x}"

    def install_pod(self, iface: PodInterface) -> None:
        if self.fail_install is not None:
            raise self.fail_install
        c = self.cookie(iface)
        previous = self._cookies.get(iface.owner)
        if previous is not None and previous != c:
            self.ovs.ofctl("del-flows", self.bridge, f"cookie={previous}/-1")
        self._cookies[iface.owner] = c
        self.ovs.ofctl(
            "add-flow",
            self.bridge,
            f"cookie={c},priority=200,in_port={iface.ofport},dl_src={iface.mac},actions=NORMAL",
        )
        self.ovs.ofctl(
            "add-flow",
            self.bridge,
            f"cookie={c},priority=200,dl_dst={iface.mac},actions=output:{iface.ofport}",
        )
        self.installed.append(iface.container_id)

    def remove_pod(self, iface: PodInterface) -> None:
        if iface.container_id in self.fail_remove:
            raise FlowFault(f"injected: flows of {iface.container_id} stuck")
        self.ovs.ofctl("del-flows", self.bridge, f"cookie={self.cookie(iface)}/-1")
        self._cookies.pop(iface.owner, None)

    def pod_flows_present(self, iface: PodInterface) -> bool:
        return len(self.dump(iface)) == 2

    def dump(self, iface: PodInterface | None = None) -> list[str]:
        args = [f"cookie={self.cookie(iface)}/-1"] if iface else []
        out = self.ovs.ofctl("dump-flows", self.bridge, *args)
        return [line for line in out.splitlines() if "cookie=" in line]


class FaultyPorts:
    """The real OVSDB client, with one injection point: `before_add(name)` runs just before a
    pod port is added (a test removes the veth there, so that real OVS answers ofport -1)."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.before_add: Callable[[str], None] | None = None

    def add_pod_port(
        self,
        bridge: str,
        name: str,
        external_ids: Mapping[str, str],
        ofport_request: int | None = None,
    ) -> Any:
        if self.before_add is not None:
            self.before_add(name)
        return self.client.add_pod_port(bridge, name, external_ids, ofport_request)

    def delete_port(self, bridge: str, name: str) -> None:
        self.client.delete_port(bridge, name)

    def list_ports(self, bridge: str) -> Any:
        return self.client.list_ports(bridge)

    def port_info(self, name: str) -> Any:
        return self.client.port_info(name)


@dataclass
class Node:
    """One node under test; see the module docstring."""

    ovs: Any
    ports: FaultyPorts
    bridge: str
    prefix: str
    pod_cidr: IPv4Network
    workdir: Path
    ipam: NodeIpam
    flows: OfctlPodFlows
    podnet: PodNetwork
    ready: threading.Event
    dispatcher: CniDispatcher
    server: CniServer
    netns_names: list[str] = field(default_factory=list)
    ipam_conf: dict[str, Any] | None = None  # the network's `ipam` section; None: none at all
    _counter: int = 0

    # -- names -------------------------------------------------------------------------------

    def next_id(self, kind: str) -> str:
        self._counter += 1
        return f"{self.prefix}{kind}{self._counter}"

    def pod_name(self, container_id: str) -> str:
        """`<prefix>c7` -> `<prefix>p7`: host veths then start with the prefix too."""
        return f"{self.prefix}p{container_id[len(self.prefix) + 1 :]}"

    def make_netns(self) -> str:
        name = self.next_id("n")
        subprocess.run(["ip", "netns", "add", name], check=True)
        self.netns_names.append(name)
        return f"/run/netns/{name}"

    def delete_netns(self, path: str) -> None:
        subprocess.run(["ip", "netns", "delete", os.path.basename(path)], check=False)

    # -- calling the executable ---------------------------------------------------------------

    def conf(self, version: str = "1.0.0", /, **extra: Any) -> dict[str, Any]:
        return {"cniVersion": version, "name": NETWORK, **self._plugin(), **extra}

    def _plugin(self) -> dict[str, Any]:
        plugin: dict[str, Any] = {"type": "plumb"}
        if self.ipam_conf is not None:
            plugin["ipam"] = dict(self.ipam_conf)
        return plugin

    def env(
        self,
        command: str,
        container_id: str = "",
        netns: str = "",
        ifname: str = "eth0",
        pod: str = "",
        **extra: str,
    ) -> dict[str, str]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "PLUMB_CNI_SOCKET": self.server.socket_path,
            "CNI_COMMAND": command,
            "CNI_PATH": f"{self.workdir / 'bin'}:{REFERENCE_DIR}",
        }
        if container_id:
            env["CNI_CONTAINERID"] = container_id
            env["CNI_IFNAME"] = ifname
            env["CNI_NETNS"] = netns
            pod_name = pod or self.pod_name(container_id)
            env["CNI_ARGS"] = f"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod_name}"
        env.update(extra)
        return env

    def call(self, env: Mapping[str, str], conf: Mapping[str, Any] | bytes) -> PluginAnswer:
        stdin = conf if isinstance(conf, bytes) else json.dumps(conf).encode()
        return exec_plugin(str(executable.path()), env, stdin, timeout=60)

    def add(
        self, container_id: str, netns: str, version: str = "1.0.0", **kw: str
    ) -> dict[str, Any]:
        answer = self.call(self.env("ADD", container_id, netns, **kw), self.conf(version))
        assert answer.exit_code == 0, answer
        result: dict[str, Any] = json.loads(answer.stdout)
        return result

    def delete(self, container_id: str, netns: str = "", **kw: str) -> PluginAnswer:
        return self.call(self.env("DEL", container_id, netns, **kw), self.conf())

    def runtime(self, **kw: Any) -> CniRuntime:
        env = {**os.environ, "PLUMB_CNI_SOCKET": self.server.socket_path}
        bin_dirs = [str(self.workdir / "bin"), REFERENCE_DIR]
        return CniRuntime(bin_dirs, str(self.workdir / "cache"), base_env=env, **kw)

    def network(self, version: str = "1.1.0", **extra: Any) -> NetworkList:
        return NetworkList(NETWORK, version, ({**self._plugin(), **extra},))

    def rt(self, netns: str, ifname: str = "eth0") -> RuntimeConf:
        cid = self.next_id("c")
        pod = self.pod_name(cid)
        args = (("IgnoreUnknown", "1"), ("K8S_POD_NAMESPACE", "default"), ("K8S_POD_NAME", pod))
        return RuntimeConf(cid, netns, ifname, args)

    # -- what is left on the node ---------------------------------------------------------

    def reservations(self) -> dict[str, str]:
        return self.ipam.reservations(NETWORK)

    @property
    def node_netns(self) -> str:
        """The node's namespace: OVS and the pods' host veths live there."""
        return f"/run/netns/{self.ovs.netns}"

    def host_veths(self) -> list[str]:
        return _link_names(self.node_netns, self.prefix)

    def in_node(self, *cmd: str) -> None:
        subprocess.run(["ip", "netns", "exec", self.ovs.netns, *cmd], check=True)

    def pod_ports(self) -> list[str]:
        return sorted(p.name for p in self.ports.list_ports(self.bridge) if p.name != self.bridge)

    def leftovers(self) -> dict[str, Any]:
        return {
            "veths": self.host_veths(),
            "ports": self.pod_ports(),
            "ips": sorted(self.reservations()),
            "flows": self.flows.dump(),
            "store": len(self.podnet.store),
            "locks": self.dispatcher.locks_held(),
        }

    NOTHING_LEFT = {"veths": [], "ports": [], "ips": [], "flows": [], "store": 0, "locks": 0}


def _link_names(netns_path: str, prefix: str) -> list[str]:
    fd = os.open(netns_path, os.O_RDONLY)
    try:
        names = in_netns(fd, lambda: host_links_with_suffix(""))
    finally:
        os.close(fd)
    return [n for n in names if n.startswith(prefix)]


@pytest.fixture
def node(ovs: Any) -> Iterator[Node]:
    from ovsdb.client import OvsdbClient

    prefix = "q" + uuid.uuid4().hex[:4]
    bridge = f"br{prefix}"
    workdir = Path(tempfile.mkdtemp(prefix=f"plumb-{prefix}-"))
    (workdir / "bin").mkdir()
    os.symlink(executable.path(), workdir / "bin" / "plumb")
    ovs.vsctl(
        "add-br",
        bridge,
        "--",
        "set",
        "bridge",
        bridge,
        "datapath_type=netdev",
        "fail_mode=secure",
    )
    client = OvsdbClient(ovs.db_remote, timeout=10)
    ports = FaultyPorts(client)
    pod_cidr = IPv4Network(f"10.251.{random.randrange(1, 250)}.0/24")
    ipam = NodeIpam(pod_cidr, data_dir=str(workdir / "ipam"))
    flows = OfctlPodFlows(ovs, bridge)
    podnet = PodNetwork(
        PodNetConfig(bridge=bridge, mtu=1450, tx_checksum_off=True, check_settle=0.2),
        ports,
        flows,
        ipam,
    )
    ready = threading.Event()
    ready.set()
    dispatcher = CniDispatcher(podnet, ready, ready_timeout=0.5)
    server = CniServer(str(workdir / "cni.sock"), dispatcher, netns=f"/run/netns/{ovs.netns}")
    server.start()
    node = Node(
        ovs,
        ports,
        bridge,
        prefix,
        pod_cidr,
        workdir,
        ipam,
        flows,
        podnet,
        ready,
        dispatcher,
        server,
    )
    try:
        yield node
    finally:
        server.stop()
        for name in node.netns_names:
            subprocess.run(["ip", "netns", "delete", name], check=False, capture_output=True)
        for link in _link_names(node.node_netns, prefix):
            subprocess.run(
                ["ip", "-n", ovs.netns, "link", "delete", link], check=False, capture_output=True
            )
        with contextlib.suppress(Exception):
            ovs.vsctl("--if-exists", "del-br", bridge)
        with contextlib.suppress(Exception):
            client.close()
        shutil.rmtree(workdir, ignore_errors=True)


IPAM_CONFS: dict[str, dict[str, Any] | None] = {
    "allocator": None,  # no ipam section: the agent's own allocator
    "plumb": {"type": "plumb"},
    "host-local": {"type": "host-local"},
}


@pytest.fixture(params=["allocator", "host-local"])
def any_ipam(node: Node, request: pytest.FixtureRequest) -> Node:
    """The node, once with the agent's allocator and once delegating to host-local."""
    node.ipam_conf = IPAM_CONFS[request.param]
    return node


@pytest.fixture
def host_local(node: Node) -> Node:
    """The node with a network that delegates to host-local."""
    node.ipam_conf = IPAM_CONFS["host-local"]
    return node
