"""A policy change must not leave a datapath flow (megaflow) of the old verdict behind.

The userspace datapath (dpif-netdev, OVS 3.1) modifies a megaflow in place by looking it up with
its masked key in the datapath classifier, not by its ufid, and takes the first match. When two
megaflows overlap (made under different flow tables, so with different masks), the revalidator's
modification can land on the other one, and the ukey of the intended one records the new
actions: that megaflow keeps its old actions, revalidation finds nothing to do, and it lives on
as long as packets use it (docs/networkpolicy.md, "A stale datapath flow after a policy
change"). The agent's answer is the revalidation epoch (`flows.policy.epoch_flows`): every
policy bundle moves it, so OVS deletes new-connection megaflows by ufid instead of modifying
them.

These tests use the agent's real pipeline, pod flows and policy reconciler on a bridge of dummy
ports (ovs-vswitchd `--enable-dummy=override`, the userspace datapath with packets injected by
`netdev-dummy/receive`), so megaflows appear exactly when and in the order the test sends
packets. A datapath classifier's subtables are searched in the order they were made (the
non-PMD thread does not re-rank them), which is what the first test arranges.
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.bridge import BridgeSettings, ensure_node_bridge
from controller.policies import LocalPod, PolicyReconciler
from controller.store import Store
from controller.switch import Switch
from flows.cookie import Category, Cookie
from flows.pod import LocalNode, PodPort, gateway_flows, pod_flows
from flows.skeleton import skeleton_flows
from lab.ovs_sandbox import SCHEMA
from tests.ovs.conftest import skip_without_ovs
from tests.unit.netpol.helpers import labels, namespace, pod, policy

pytestmark = pytest.mark.ovs

NODE = "node-a"
CIDR = "10.244.0.0/24"
# name -> (ofport, address); b and c sit in one /30, so their megaflows share a mask.
PODS = {
    "a": (1, "10.244.0.3"),
    "b": (2, "10.244.0.4"),
    "c": (3, "10.244.0.5"),
    "d": (4, "10.244.0.6"),
    "e": (5, "10.244.0.7"),
}


def mac_of(ip: str) -> str:
    return "0a:58:" + ":".join(f"{int(b):02x}" for b in ip.split("."))


def run(*args: str) -> str:
    done = subprocess.run(list(args), capture_output=True, text=True, timeout=20)
    assert done.returncode == 0, f"{' '.join(args)}: {done.stderr}"
    return done.stdout


class DummyOvs:
    """ovsdb-server and ovs-vswitchd with dummy datapaths and ports, in a directory of their
    own (no network namespace: dummy ports touch no kernel device)."""

    def __init__(self, rundir: Path) -> None:
        self.rundir = rundir
        self.db = f"unix:{rundir}/db.sock"
        db_file = rundir / "conf.db"
        run("ovsdb-tool", "create", str(db_file), str(SCHEMA))
        run(
            "ovsdb-server", str(db_file), f"--remote=punix:{rundir}/db.sock",
            *self._daemon("ovsdb-server"),
        )  # fmt: skip
        run("ovs-vsctl", f"--db={self.db}", "--no-wait", "init")
        env = {**os.environ, "OVS_RUNDIR": str(rundir)}
        subprocess.run(
            ["ovs-vswitchd", self.db, "--enable-dummy=override", "--disable-system",
             *self._daemon("ovs-vswitchd")],
            env=env, check=True, capture_output=True, timeout=20,
        )  # fmt: skip

    def _daemon(self, name: str) -> list[str]:
        d = self.rundir
        return [
            f"--pidfile={d}/{name}.pid",
            f"--unixctl={d}/{name}.ctl",
            f"--log-file={d}/{name}.log",
            "--detach",
            "--no-chdir",
        ]

    def appctl(self, *args: str) -> str:
        return run("ovs-appctl", "-t", f"{self.rundir}/ovs-vswitchd.ctl", *args)

    def vsctl(self, *args: str) -> str:
        return run("ovs-vsctl", f"--db={self.db}", *args)

    def stop(self) -> None:
        for name in ("ovs-vswitchd", "ovsdb-server"):
            pidfile = self.rundir / f"{name}.pid"
            try:
                pid = int(pidfile.read_text().strip())
            except (FileNotFoundError, ValueError):
                continue
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.02)
            else:
                os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def dummy_ovs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DummyOvs]:
    skip_without_ovs()
    # AF_UNIX paths are limited to 108 bytes: a short directory of its own.
    rundir = Path(f"/tmp/plumb-dummy-{uuid.uuid4().hex[:8]}")
    rundir.mkdir()
    ovs = DummyOvs(rundir)
    try:
        yield ovs
    finally:
        ovs.stop()
        subprocess.run(["rm", "-rf", str(rundir)], check=False)


class Node:
    """One node's bridge of dummy pod ports with the agent's pipeline, pod flows and policy
    reconciler (driven through its store, as the agent's sources drive it)."""

    def __init__(self, ovs: DummyOvs) -> None:
        self.ovs = ovs
        self.bridge = f"s{uuid.uuid4().hex[:7]}"
        ensure_node_bridge(ovs.db, BridgeSettings(name=self.bridge, datapath_type="netdev"))
        for name, (ofport, _) in PODS.items():
            iface = f"{self.bridge}{name}"
            ovs.vsctl(
                "add-port", self.bridge, iface, "--",
                "set", "interface", iface, "type=dummy", f"ofport_request={ofport}",
            )  # fmt: skip
        self.mgmt = ovs.rundir / f"{self.bridge}.mgmt"
        deadline = time.monotonic() + 10
        while not self.mgmt.exists():
            assert time.monotonic() < deadline, "bridge management socket never appeared"
            time.sleep(0.02)
        self.switch = Switch(self.mgmt, request_timeout=5)
        self.switch.start()
        self.switch.wait_connected(10)
        local = LocalNode(CIDR, "10.244.0.1", mac_of("10.244.0.1"))
        changes: dict[str, Any] = {
            "pipeline": skeleton_flows(1),
            "node/local": gateway_flows(local, Cookie(1, Category.NODE, 0).value),
        }
        for name, (ofport, ip) in PODS.items():
            cookie = Cookie(1, Category.POD, ofport).value
            changes[f"pod/x/{name}"] = pod_flows(PodPort(ofport, ip, mac_of(ip)), local, cookie)
        self.switch.replace_many(changes)
        self.store = Store()
        self.store.upsert("Namespace", namespace("x"))
        self.store.upsert("Node", {"metadata": {"name": NODE}, "spec": {"podCIDR": CIDR}})
        for name, (_, ip) in PODS.items():
            self.store.upsert("Pod", pod("x", name, ip, app=name))
        self.reconciler = PolicyReconciler(
            self.store,
            self.switch,
            1,
            NODE,
            lambda: [LocalPod("x", name, port, ip) for name, (port, ip) in PODS.items()],
        )
        self.reconciler.start()
        shown = ovs.appctl("dpif/show")
        self.odp = {m[1]: int(m[2]) for m in re.finditer(r"^\s+(\S+) \d+/(\d+):", shown, re.M)}
        self._ports = itertools.count(20000)

    def close(self) -> None:
        self.reconciler.stop()
        self.switch.stop()
        self.ovs.vsctl("--if-exists", "del-br", self.bridge)

    def apply(self, *policies: dict[str, Any], delete: tuple[str, ...] = ()) -> None:
        """Policies in and out through the store; return once committed and revalidated."""
        for obj in policies:
            self.store.upsert("NetworkPolicy", obj)
        for name in delete:
            self.store.delete("NetworkPolicy", "x", name)
        assert self.reconciler.wait_idle(5)
        for _ in range(2):  # one full revalidation round after the commit
            self.ovs.appctl("revalidator/wait")

    def send(self, src: str, dst: str, protocol: str, port: int) -> None:
        """One packet opening a new connection (a new source port each time)."""
        (_, src_ip), (_, dst_ip) = PODS[src], PODS[dst]
        l4 = {
            "tcp": f"ipv4(src={src_ip},dst={dst_ip},proto=6,tos=0,ttl=64,frag=no),"
            f"tcp(src={next(self._ports)},dst={port}),tcp_flags(syn)",
            "udp": f"ipv4(src={src_ip},dst={dst_ip},proto=17,tos=0,ttl=64,frag=no),"
            f"udp(src={next(self._ports)},dst={port})",
        }[protocol]
        iface = f"{self.bridge}{src}"
        packet = (
            f"in_port({self.odp[iface]}),eth(src={mac_of(src_ip)},dst={mac_of(dst_ip)}),"
            f"eth_type(0x0800),{l4}"
        )
        self.ovs.appctl("netdev-dummy/receive", iface, packet)

    def delivered(self, src: str, dst: str, protocol: str, port: int) -> bool:
        """Whether a new connection's first packet comes out of the destination's port."""
        before = self._tx(dst)
        self.send(src, dst, protocol, port)
        return self._tx(dst) > before

    def tables_allow(self, src: str, dst: str, protocol: str, port: int) -> bool:
        """What the OpenFlow tables say about a new connection (ofproto/trace)."""
        (src_port, src_ip), (dst_port, dst_ip) = PODS[src], PODS[dst]
        flow = (
            f"in_port={src_port},dl_src={mac_of(src_ip)},dl_dst={mac_of(dst_ip)},{protocol},"
            f"nw_src={src_ip},nw_dst={dst_ip},nw_ttl=64,{protocol}_dst={port}"
        )
        out = self.ovs.appctl("ofproto/trace", self.bridge, flow, "--ct-next", "trk,new")
        return f"output port is {dst_port}" in out

    def megaflows(self) -> dict[str, str]:
        """ufid -> ct_state of every recirculated (after conntrack) megaflow."""
        out = self.ovs.appctl("dpctl/dump-flows", "-m")
        flows = {}
        for line in out.splitlines():
            found = re.match(
                r"ufid:(\S+), .*ct_state\((0x[0-9a-f]+)/[^)]*\).*recirc_id\((\S+?)\)", line
            )
            if found and found[3] != "0":
                flows[found[1]] = found[2]
        return flows

    def _tx(self, name: str) -> int:
        out = run(
            "ovs-ofctl", "-O", "OpenFlow13", "dump-ports", f"unix:{self.mgmt}", str(PODS[name][0])
        )
        found = re.search(r"tx pkts=(\d+)", out)
        assert found, out
        return int(found[1])


@pytest.fixture
def node(dummy_ovs: DummyOvs) -> Iterator[Node]:
    dummy_ovs.appctl("revalidator/purge")
    n = Node(dummy_ovs)
    try:
        yield n
    finally:
        n.close()


def port_policy(name: str, target: str, protocol: str, port: int) -> dict[str, Any]:
    """`target` takes `protocol`/`port` from anyone (and nothing else)."""
    rule = {"ports": [{"port": port, "protocol": protocol}]}
    return policy("x", name, podSelector=labels(app=target), ingress=[rule])


def test_isolating_a_pod_leaves_no_megaflow_of_the_old_verdict(node: Node) -> None:
    """Overlapping megaflows for one pair, the wider one's classifier subtable first, then the
    pair is isolated: new connections must be dropped, as the tables say.

    d's SCTP port makes every TCP and UDP megaflow consult the IP protocol; e's TCP ports make
    TCP megaflows consult the destination port too, while they exist; a's UDP traffic to c
    (same mask as a's TCP traffic to b without the port) keeps the wider mask's subtable first.
    Without the revalidation epoch, isolating b modifies the wider a->b megaflow twice (once
    meant for the narrower a->b:81 one), the narrower one keeps `ct(commit),output`, and once
    the wider one is gone (a later change makes it too general) a->b:81 gets through for as
    long as connections keep coming: 20 s and more in the lab."""
    node.apply(port_policy("z", "d", "SCTP", 81))
    assert node.delivered("a", "c", "udp", 80)  # the wider mask's subtable, made first
    node.apply(port_policy("y", "e", "TCP", 81))
    assert node.delivered("a", "b", "tcp", 81)  # the narrower megaflow (port 81 consulted)
    node.apply(delete=("y",))
    assert node.delivered("a", "b", "tcp", 80)  # the wider one, overlapping it
    node.send("a", "c", "udp", 80)

    node.apply(policy("x", "x", podSelector=labels(app="b"), policyTypes=["Ingress"]))
    assert not node.tables_allow("a", "b", "tcp", 81)
    assert not node.delivered("a", "b", "tcp", 81), "b isolated, a megaflow lets a through"

    node.apply(port_policy("y2", "e", "TCP", 82))  # TCP megaflows consult the port again
    for _ in range(3):
        assert not node.tables_allow("a", "b", "tcp", 81)
        assert not node.delivered("a", "b", "tcp", 81), "b isolated, a megaflow lets a through"


def test_a_policy_change_replaces_new_connection_megaflows_and_keeps_the_others(
    node: Node,
) -> None:
    """What the epoch costs: after a policy bundle, every megaflow of a new connection is
    translated afresh (its ufid is gone, not modified in place); megaflows of established
    connections, which skip the rule tables, stay."""
    node.apply(port_policy("z", "d", "SCTP", 81))
    node.send("a", "b", "udp", 80)
    port = next(node._ports) - 1
    (_, a_ip), (_, b_ip) = PODS["a"], PODS["b"]
    reply = (
        f"in_port({node.odp[node.bridge + 'b']}),eth(src={mac_of(b_ip)},dst={mac_of(a_ip)}),"
        f"eth_type(0x0800),ipv4(src={b_ip},dst={a_ip},proto=17,tos=0,ttl=64,frag=no),"
        f"udp(src=80,dst={port})"
    )
    node.ovs.appctl("netdev-dummy/receive", node.bridge + "b", reply)
    before = node.megaflows()
    new = {u for u, state in before.items() if int(state, 16) & 0x01}
    established = {u for u, state in before.items() if int(state, 16) & 0x02}
    assert new and established, before

    node.apply(policy("x", "x", podSelector=labels(app="b"), policyTypes=["Ingress"]))
    after = node.megaflows()
    assert not new & set(after), "new-connection megaflows were modified in place"
    assert established <= set(after), "established connections' megaflows were deleted"
