"""`python -m bench cni`: CNI ADD and DEL latency of plumb against Debian's reference `bridge`
plugin with host-local, the same N pods each, side by side in one run; then K concurrent ADDs.

Both plugins are called as a runtime calls them (lab.cniruntime: libcni-style config, env,
result cache), from an installed copy of each executable. Plumb's side is a whole node: a
private OVS (userspace datapath), the bridge with the pipeline skeleton and gateway flows, the
OpenFlow switch connection installing real pod flows, host-local IPAM and the CNI server, all
in-process. The reference bridge works in a namespace of its own. Calls alternate between the
two plugins so that machine noise hits both alike. Every name carries a random prefix and is
removed by that name at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any, TypeVar

from cni import executable
from cni.ipam import NodeIpam
from cni.netns import in_netns, open_netns
from cni.podnet import PodNetConfig, PodNetwork
from cni.server import CniDispatcher, CniServer
from controller.bridge import BridgeSettings, ensure_node_bridge
from controller.podflows import SwitchPodFlows
from controller.switch import Switch
from flows.cookie import Category, Cookie
from flows.pod import LocalNode, gateway_flows
from flows.skeleton import skeleton_flows
from lab.cniruntime import CniRuntime, NetworkList, RuntimeConf
from lab.ovs_sandbox import OvsSandbox
from ovsdb.client import OvsdbClient

REFERENCE_DIR = "/usr/lib/cni"
PLUMB_CIDR = IPv4Network("10.252.0.0/22")  # only ever inside namespaces this run creates
REF_CIDR = IPv4Network("10.252.8.0/22")
GATEWAY_MAC = "0a:58:0a:fc:00:01"
T = TypeVar("T")


@dataclass(frozen=True)
class Latencies:
    add_ms: list[float]
    del_ms: list[float]

    def summary(self) -> dict[str, float]:
        return {
            "add_p50_ms": round(percentile(self.add_ms, 50), 2),
            "add_p99_ms": round(percentile(self.add_ms, 99), 2),
            "del_p50_ms": round(percentile(self.del_ms, 50), 2),
            "del_p99_ms": round(percentile(self.del_ms, 99), 2),
        }


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, round(pct / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def timed(call: Callable[[], T]) -> tuple[float, T]:
    start = time.perf_counter()
    value = call()
    return (time.perf_counter() - start) * 1000, value


@contextlib.contextmanager
def namespaces(prefix: str, count: int) -> Iterator[list[str]]:
    names = [f"{prefix}{i}" for i in range(count)]
    try:
        for name in names:
            subprocess.run(["ip", "netns", "add", name], check=True)
        yield [f"/run/netns/{n}" for n in names]
    finally:
        for name in names:
            subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)


@contextlib.contextmanager
def plumb_node(workdir: Path, prefix: str) -> Iterator[tuple[CniServer, str]]:
    """A whole plumb node in-process; yields the CNI server and the node's netns name."""
    sandbox = OvsSandbox(workdir / "ovs")
    sandbox.start()
    bridge = "br-int"
    switch = Switch(sandbox.mgmt_socket(bridge), request_timeout=10)
    client: OvsdbClient | None = None
    server: CniServer | None = None
    try:
        ensure_node_bridge(sandbox.db_remote, BridgeSettings(name=bridge, datapath_type="netdev"))
        _wait_for(sandbox.mgmt_socket(bridge).exists, "bridge management socket")
        switch.start()
        switch.wait_connected(10)
        gateway_ip = str(PLUMB_CIDR.network_address + 1)
        local = LocalNode(pod_cidr=str(PLUMB_CIDR), gateway_ip=gateway_ip, gateway_mac=GATEWAY_MAC)
        switch.replace_flows("pipeline", skeleton_flows(1))
        switch.replace_flows("node/local", gateway_flows(local, Cookie(1, Category.NODE, 0).value))
        client = OvsdbClient(sandbox.db_remote)
        podnet = PodNetwork(
            PodNetConfig(bridge=bridge, mtu=1450, tx_checksum_off=True),
            client,
            SwitchPodFlows(switch, local, 1),
            NodeIpam(PLUMB_CIDR, data_dir=str(workdir / "ipam")),
        )
        ready = threading.Event()
        ready.set()
        assert sandbox.netns is not None
        server = CniServer(
            str(workdir / "cni.sock"),
            CniDispatcher(podnet, ready),
            netns=f"/run/netns/{sandbox.netns}",
        )
        server.start()
        yield server, sandbox.netns
    finally:
        if server is not None:
            server.stop()
        switch.stop()
        if client is not None:
            client.close()
        sandbox.cleanup()


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not appear")
        time.sleep(0.02)


def in_thread_netns(netns: str, work: Callable[[], T]) -> T:
    """Run `work` in a thread inside `netns`: plugins it starts are born there, with no
    `ip netns exec` in the measured path."""
    fd = open_netns(netns)
    try:
        return in_netns(fd, work)
    finally:
        os.close(fd)


def install(bin_dir: Path) -> None:
    """Installed copies, as a deployment would have them (CNI_PATH = bin_dir only)."""
    bin_dir.mkdir(parents=True)
    shutil.copy2(executable.path(), bin_dir / "plumb")
    for name in ("bridge", "host-local", "loopback"):
        shutil.copy2(f"{REFERENCE_DIR}/{name}", bin_dir / name)


def plumb_plugin(ipam: str) -> dict[str, Any]:
    """plumb's network: `plumb` (the agent's own allocator, the default) leaves the ipam
    section out; `host-local` delegates to the plugin, as before the allocator existed."""
    return {"type": "plumb"} if ipam == "plumb" else {"type": "plumb", "ipam": {"type": ipam}}


def run(pods: int, concurrent: int, ipam: str = "plumb") -> dict[str, Any]:
    prefix = "pb" + uuid.uuid4().hex[:5]
    workdir = Path(tempfile.mkdtemp(prefix=f"plumb-bench-{prefix}-"))
    ref_bridge = f"{prefix}br"
    try:
        install(workdir / "bin")
        with (
            plumb_node(workdir, prefix) as (server, _),
            namespaces(f"{prefix}r", 1) as (ref_node,),
            namespaces(f"{prefix}p", pods + concurrent) as plumb_pods,
            namespaces(f"{prefix}b", pods) as ref_pods,
        ):
            env = {**os.environ, "PLUMB_CNI_SOCKET": server.socket_path}
            runtime = CniRuntime([str(workdir / "bin")], str(workdir / "cache"), base_env=env)
            plumb_net = NetworkList("benchplumb", "1.0.0", (plumb_plugin(ipam),))
            ref_net = NetworkList(
                "benchref",
                "1.0.0",
                (
                    {
                        "type": "bridge",
                        "bridge": ref_bridge,
                        "isGateway": True,
                        "ipMasq": False,
                        "ipam": {
                            "type": "host-local",
                            "ranges": [[{"subnet": str(REF_CIDR)}]],
                            "dataDir": str(workdir / "ref-ipam"),
                        },
                    },
                ),
            )

            def sequential() -> tuple[Latencies, Latencies]:
                return measure(runtime, plumb_net, ref_net, plumb_pods[:pods], ref_pods, prefix)

            ours, ref = in_thread_netns(ref_node, sequential)
            wall, errors = in_thread_netns(
                ref_node,
                lambda: concurrent_adds(runtime, plumb_net, plumb_pods[pods:], prefix),
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    result = report(pods, ours, ref, concurrent, wall, errors)
    # Both plugins feel a busy machine, but not alike (plumb runs more threads and processes):
    # the load average says how busy it was.
    result["plumb_ipam"] = ipam
    result["loadavg_1m_after"] = round(os.getloadavg()[0], 2)
    return result


def measure(
    runtime: CniRuntime,
    plumb_net: NetworkList,
    ref_net: NetworkList,
    plumb_pods: list[str],
    ref_pods: list[str],
    prefix: str,
) -> tuple[Latencies, Latencies]:
    args = (("IgnoreUnknown", "1"), ("K8S_POD_NAMESPACE", "bench"))
    ours_rt = [
        RuntimeConf(f"{prefix}c{i}", ns, "eth0", (*args, ("K8S_POD_NAME", f"web-{i}")))
        for i, ns in enumerate(plumb_pods)
    ]
    ref_rt = [RuntimeConf(f"{prefix}r{i}", ns, "eth0", args) for i, ns in enumerate(ref_pods)]
    # One untimed warm-up each: the reference creates its bridge on the first ADD.
    warm = (ours_rt.pop(), ref_rt.pop())
    runtime.add(plumb_net, warm[0])
    runtime.add(ref_net, warm[1])
    ours, ref = Latencies([], []), Latencies([], [])
    for mine, theirs in zip(ours_rt, ref_rt, strict=True):
        ours.add_ms.append(timed(partial(runtime.add, plumb_net, mine))[0])
        ref.add_ms.append(timed(partial(runtime.add, ref_net, theirs))[0])
    for mine, theirs in zip(ours_rt, ref_rt, strict=True):
        ours.del_ms.append(timed(partial(runtime.delete, plumb_net, mine))[0])
        ref.del_ms.append(timed(partial(runtime.delete, ref_net, theirs))[0])
    runtime.delete(plumb_net, warm[0])
    runtime.delete(ref_net, warm[1])
    return ours, ref


def concurrent_adds(
    runtime: CniRuntime, net: NetworkList, pods: list[str], prefix: str
) -> tuple[float, int]:
    confs = [RuntimeConf(f"{prefix}k{i}", ns) for i, ns in enumerate(pods)]

    def add(rt: RuntimeConf) -> bool:
        try:
            runtime.add(net, rt)
        except Exception:
            return False
        return True

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=len(confs)) as pool:
        ok = list(pool.map(add, confs))
    wall = time.perf_counter() - start
    for rt in confs:
        with contextlib.suppress(Exception):
            runtime.delete(net, rt)
    return wall, ok.count(False)


def report(
    pods: int, ours: Latencies, ref: Latencies, concurrent: int, wall: float, errors: int
) -> dict[str, Any]:
    mine, theirs = ours.summary(), ref.summary()
    ratios = {k.replace("_ms", "_ratio"): round(mine[k] / theirs[k], 2) for k in mine}
    return {
        "benchmark": "cni",
        "pods": len(ours.add_ms),
        "requested_pods": pods,
        "plumb": mine,
        "reference_bridge": theirs,
        "ratio": ratios,
        "add_p50_target_ratio": 1.5,
        "concurrent_adds": concurrent,
        "concurrent_wall_s": round(wall, 3),
        "concurrent_errors": errors,
    }


def print_table(result: dict[str, Any]) -> None:
    cols = ("add_p50_ms", "add_p99_ms", "del_p50_ms", "del_p99_ms")
    print(
        f"CNI latency, {result['pods']} sequential pods, called as a runtime calls (ms); "
        f"plumb's IPAM: {result['plumb_ipam']}; load average {result['loadavg_1m_after']}"
    )
    print(f"{'':22}{'ADD p50':>9}{'ADD p99':>9}{'DEL p50':>9}{'DEL p99':>9}")
    for label, row in (
        ("plumb", result["plumb"]),
        ("bridge + host-local", result["reference_bridge"]),
    ):
        print(f"{label:22}" + "".join(f"{row[c]:>9.2f}" for c in cols))
    ratio = result["ratio"]
    print(
        f"{'ratio plumb/ref':22}"
        + "".join(f"{ratio[c.replace('_ms', '_ratio')]:>9.2f}" for c in cols)
    )
    print(
        f"{result['concurrent_adds']} concurrent ADDs (plumb): {result['concurrent_wall_s']:.3f} s "
        f"wall, {result['concurrent_errors']} errors"
    )


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench cni", description=__doc__)
    parser.add_argument("--pods", type=int, default=100, help="sequential pods per plugin")
    parser.add_argument("--concurrent", type=int, default=20, help="parallel ADDs")
    parser.add_argument(
        "--ipam",
        choices=("plumb", "host-local"),
        default="plumb",
        help="plumb's IPAM: the agent's allocator (default) or host-local run per call",
    )
    args = parser.parse_args(list(argv))
    if os.geteuid() != 0:
        print("bench cni needs root (namespaces, OVS)", flush=True)
        return 2
    result = run(args.pods + 1, args.concurrent, args.ipam)  # +1: the untimed warm-up pod
    print_table(result)
    print(json.dumps(result))
    return 0 if result["concurrent_errors"] == 0 else 1
