"""`python -m bench datapath`: iperf3 TCP throughput pod to pod, on one node and across nodes
(Geneve), side by side with the floors of the same userspace datapath.

Ours: a 2-node lab (`plumbctl lab`, real agents, real CNI, the full pipeline), pods a and b on
node1 and c on node2. Floors (`lab.floor`), on a second lab built without agents, with the same
interface settings (veths with TX checksum offload off, the pods' MTU): for one node, two
namespaces on a bridge with a single NORMAL flow; across nodes, one namespace per node on bridges
holding only the tunnel's flows (set tun_dst and output; from the tunnel, output). The four paths
are measured in turn, `--rounds` times, so machine noise hits them alike; the median is kept.
Labs get random names and are taken down at the end, whatever happens.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

from lab import cluster, floor
from lab.layout import LabLayout

REPO = Path(__file__).resolve().parents[1]
IPERF_PORT = 5201
PODS = [
    ("a", "node1"),
    ("b", "node1"),
    ("c", "node2"),
]


def iperf(client_netns: str, server_netns: str, server_ip: str, seconds: float) -> float:
    """Gbit/s received by one iperf3 TCP stream from client to server."""
    server = subprocess.Popen(
        ["ip", "netns", "exec", server_netns, "iperf3", "-s", "-p", str(IPERF_PORT)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        _wait_listening(server_netns, IPERF_PORT)
        done = subprocess.run(
            ["ip", "netns", "exec", client_netns, "iperf3", "-c", server_ip,
             "-p", str(IPERF_PORT), "-t", str(seconds), "-J", "--connect-timeout", "3000"],
            capture_output=True, text=True, timeout=seconds + 30, check=False,
        )  # fmt: skip
        report = json.loads(done.stdout or "{}")
        if "error" in report or done.returncode != 0:
            raise RuntimeError(f"iperf3 {client_netns} -> {server_ip}: {report.get('error')}")
        return float(report["end"]["sum_received"]["bits_per_second"]) / 1e9
    finally:
        server.kill()
        server.wait()


def _wait_listening(netns: str, port: int, timeout: float = 5.0) -> None:
    """Until a TCP socket listens on `port` in `netns` (state 0A in /proc/net/tcp or tcp6:
    iperf3 listens on a dual-stack socket)."""
    needle = f":{port:04X} "
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        table = subprocess.run(
            ["ip", "netns", "exec", netns, "cat", "/proc/net/tcp", "/proc/net/tcp6"],
            capture_output=True,
            text=True,
        ).stdout
        if any(needle in line and line.split()[3] == "0A" for line in table.splitlines()):
            return
        time.sleep(0.02)
    raise RuntimeError(f"iperf3 server in {netns} is not listening on {port}")


def plumbctl(name: str, *args: str) -> str:
    cmd = [sys.executable, "-m", "plumbctl", "lab", *args, "--name", name]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"plumbctl lab {' '.join(args)}: {done.stdout}{done.stderr}")
    return done.stdout


def pods_yaml() -> str:
    return "\n---\n".join(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": name, "namespace": "bench"},
                "spec": {"nodeName": node, "containers": [{"name": "c", "image": "none"}]},
            }
        )
        for name, node in PODS
    )


def pod_mtu(netns: str) -> int:
    out = subprocess.run(
        ["ip", "-n", netns, "-o", "link", "show", "eth0"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return int(out.split(" mtu ")[1].split()[0])


def run(seconds: float, rounds: int) -> dict[str, float | int]:
    ours, base = f"bdp{uuid.uuid4().hex[:5]}", f"bfl{uuid.uuid4().hex[:5]}"
    try:
        plumbctl(ours, "up", "--nodes", "2", "--encap", "geneve")
        with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
            f.write(pods_yaml())
            f.flush()
            plumbctl(ours, "apply", "-f", f.name)
        layout = LabLayout(ours)
        pods = json.loads(plumbctl(ours, "get", "pods", "-o", "json"))["items"]
        ip = {p["metadata"]["name"]: p["status"]["podIP"] for p in pods}
        ns = {name: layout.pod_netns("bench", name) for name, _ in PODS}
        mtu = pod_mtu(ns["a"])
        cluster.up(base, nodes=2, encap="geneve", agents=False)
        floor_layout = LabLayout(base)
        samples: dict[str, list[float]] = {
            k: [] for k in ("local", "floor_local", "cross", "floor_cross")
        }
        for _ in range(rounds):
            samples["local"].append(iperf(ns["a"], ns["b"], ip["b"], seconds))
            with floor.bridge_floor(floor_layout, mtu) as (x, y):
                samples["floor_local"].append(iperf(x.netns, y.netns, y.ip, seconds))
            samples["cross"].append(iperf(ns["a"], ns["c"], ip["c"], seconds))
            with floor.tunnel_floor(floor_layout, "geneve", mtu) as (x, y):
                samples["floor_cross"].append(iperf(x.netns, y.netns, y.ip, seconds))
    finally:
        subprocess.run([sys.executable, "-m", "plumbctl", "lab", "down", "--name", ours],
                       capture_output=True, cwd=REPO, check=False)  # fmt: skip
        cluster.down(base)
    result: dict[str, float | int] = {k: statistics.median(v) for k, v in samples.items()}
    result["ratio_local"] = result["local"] / result["floor_local"]
    result["ratio_cross"] = result["cross"] / result["floor_cross"]
    result.update(mtu=mtu, seconds=seconds, rounds=rounds)
    return result


def print_table(r: dict[str, float | int], say: Callable[[str], None] = print) -> None:
    say(f"pod MTU {r['mtu']}, TX checksum offload off, one TCP stream, {r['seconds']:g} s x "
        f"{r['rounds']} rounds (median)")  # fmt: skip
    say(f"{'path':<22} {'plumb':>12} {'floor':>12} {'ratio':>7}")
    for label, ours, base, ratio in (
        ("one node", "local", "floor_local", "ratio_local"),
        ("across nodes (geneve)", "cross", "floor_cross", "ratio_cross"),
    ):
        say(f"{label:<22} {r[ours]:>7.2f} Gb/s {r[base]:>7.2f} Gb/s {r[ratio]:>7.2f}")


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench datapath", description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0, help="per iperf3 run")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(list(argv))
    if os.geteuid() != 0:
        print("bench datapath needs root (namespaces, OVS)", flush=True)
        return 2
    result = run(args.seconds, args.rounds)
    print_table(result)
    print(json.dumps(result))
    return 0
