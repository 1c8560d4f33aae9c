"""`python -m bench flow-install`: installing N flows through our switch connection against
`ovs-ofctl --bundle add-flows` of the same flows as text, into fresh bridges of one private OVS.

The flows are shaped like real ones: per pod a classifier, ARP and IP spoof guard, L3 and L2
forwarding flow; per policy rule, clause flows on peer addresses and ports. Timing starts with
the flow values in hand and ends when the bundle commit is acknowledged; the encoder's caches
are cleared before each of our runs so every run pays for encoding.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from controller.bridge import BridgeSettings, ensure_node_bridge
from controller.switch import Switch
from flows import encode
from flows.fields import FROM_POD, OUTPUT_TO_PORT, TARGET_OFPORT, TO_LOCAL
from flows.flow import Conjunction, Flow, GotoTable, Load, SetField, match
from flows.ofctl import render_flow
from flows.pipeline import table
from lab.ovs_sandbox import OvsSandbox

POD_FLOWS = 5
GATEWAY_MAC = "0a:58:0a:00:00:01"


def pod_like_flows(index: int, cookie: int) -> list[Flow]:
    ofport = index + 1
    ip = f"10.{(index >> 16) & 0xFF}.{(index >> 8) & 0xFF}.{index & 0xFF}"
    mac = f"0a:58:00:{(index >> 16) & 0xFF:02x}:{(index >> 8) & 0xFF:02x}:{index & 0xFF:02x}"
    return [
        table("Classifier").flow(
            190, match(in_port=ofport), [Load.mark(FROM_POD), GotoTable("SpoofGuard")], cookie
        ),
        table("ARPSpoofGuard").flow(
            200,
            match(eth_type=0x0806, in_port=ofport, arp_spa=ip, arp_sha=mac),
            [GotoTable("ARPResponder")],
            cookie,
        ),
        table("SpoofGuard").flow(
            200,
            match(in_port=ofport, eth_src=mac, eth_type=0x0800, ipv4_src=ip),
            [GotoTable("UnSNAT")],
            cookie,
        ),
        table("L3Forwarding").flow(
            200,
            match(eth_type=0x0800, ipv4_dst=ip),
            [
                SetField.of("eth_src", GATEWAY_MAC),
                SetField.of("eth_dst", mac),
                GotoTable("L3DecTTL"),
            ],
            cookie,
        ),
        table("L2ForwardingCalc").flow(
            200,
            match(eth_dst=mac),
            [
                Load(TARGET_OFPORT, ofport),
                Load.mark(OUTPUT_TO_PORT),
                GotoTable("IngressSecurityClassifier"),
            ],
            cookie,
        ),
    ]


def policy_like_flows(index: int, cookie: int) -> list[Flow]:
    """Two clause flows: a peer address and a target-port/port pair of one rule."""
    conj_id = 1000 + index // 4
    peer = f"172.{16 + ((index >> 16) & 0x0F)}.{(index >> 8) & 0xFF}.{index & 0xFF}"
    return [
        table("IngressRule").flow(
            200, match(eth_type=0x0800, ipv4_src=peer), [Conjunction(conj_id, 1, 2)], cookie
        ),
        table("IngressRule").flow(
            200,
            match(
                TO_LOCAL, eth_type=0x0800, ip_proto=6, reg1=index + 1, tcp_dst=1024 + index % 60000
            ),
            [Conjunction(conj_id, 2, 2)],
            cookie,
        ),
    ]


def bench_flows(n: int, cookie: int = 0x0001_0200_0000_0001) -> list[Flow]:
    """n distinct flows: about 40% pod-shaped, 60% policy-shaped."""
    pods = max(1, (n * 2 // 5) // POD_FLOWS)
    flows: list[Flow] = []
    for i in range(pods):
        flows.extend(pod_like_flows(i, cookie))
    i = 0
    while len(flows) < n:
        flows.extend(policy_like_flows(i, cookie))
        i += 1
    return flows[:n]


def _fresh_bridge(ovs: OvsSandbox, name: str) -> Path:
    """A new bridge set up as the agent sets up br-int (tables named), so both contenders
    install the same text and the same flows."""
    ovs.vsctl("--if-exists", "del-br", name)
    ensure_node_bridge(ovs.db_remote, BridgeSettings(name=name, datapath_type="netdev"))
    for _ in range(100):
        if ovs.mgmt_socket(name).exists():
            break
        time.sleep(0.02)
    return ovs.mgmt_socket(name)


def _flow_count(ovs: OvsSandbox, bridge: str) -> int:
    out = ovs.ofctl("-O", "OpenFlow13", "dump-aggregate", str(ovs.mgmt_socket(bridge)))
    return int(out.split("flow_count=")[1].split()[0])


def run_ours(ovs: OvsSandbox, flows: list[Flow], run: int) -> float:
    bridge = f"bench-ours{run}"
    mgmt = _fresh_bridge(ovs, bridge)
    fresh = [Flow(f.table, f.table_id, f.priority, f.match, f.actions, f.cookie) for f in flows]
    encode.instruction_bytes.cache_clear()
    switch = Switch(mgmt, request_timeout=60)
    switch.start()
    switch.wait_connected(10)
    try:
        start = time.perf_counter()
        switch.replace_flows("bench", fresh)
        elapsed = time.perf_counter() - start
    finally:
        switch.stop()
    _check_count(ovs, bridge, len(flows))
    ovs.vsctl("del-br", bridge)
    return elapsed


def run_ofctl(ovs: OvsSandbox, text_file: Path, n: int, run: int) -> float:
    bridge = f"bench-ofctl{run}"
    mgmt = _fresh_bridge(ovs, bridge)
    start = time.perf_counter()
    subprocess.run(
        ["ovs-ofctl", "-O", "OpenFlow13", "--bundle", "add-flows", str(mgmt), str(text_file)],
        check=True,
    )
    elapsed = time.perf_counter() - start
    _check_count(ovs, bridge, n)
    ovs.vsctl("del-br", bridge)
    return elapsed


def _check_count(ovs: OvsSandbox, bridge: str, n: int) -> None:
    got = _flow_count(ovs, bridge)
    if got != n:
        raise RuntimeError(f"{bridge}: {got} flows installed, expected {n}")


def _as_ofctl_text(flows: list[Flow]) -> str:
    return "".join(render_flow(flow).strip() + "\n" for flow in flows)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench flow-install")
    parser.add_argument("--flows", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)

    flows = bench_flows(args.flows)
    ours: list[float] = []
    theirs: list[float] = []
    with tempfile.TemporaryDirectory(prefix="plumb-bench-") as tmp:
        text_file = Path(tmp) / "flows.txt"
        text_file.write_text(_as_ofctl_text(flows))
        with OvsSandbox(Path(tmp) / "ovs") as ovs:
            for run in range(args.runs):
                ours.append(run_ours(ovs, flows, run))
                theirs.append(run_ofctl(ovs, text_file, len(flows), run))
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    figures = {
        "benchmark": "flow-install",
        "flows": len(flows),
        "runs": args.runs,
        "ours_median_s": round(statistics.median(ours), 3),
        "ovs_ofctl_median_s": round(statistics.median(theirs), 3),
        "ratio": round(statistics.median(ours) / statistics.median(theirs), 2),
        "ours_flows_per_s": round(len(flows) / statistics.median(ours)),
        "peak_rss_mb": round(peak_rss_mb, 1),
        "ours_runs_s": [round(x, 3) for x in ours],
        "ovs_ofctl_runs_s": [round(x, 3) for x in theirs],
    }
    _print_table(figures)
    print(json.dumps(figures))
    return 0


def _print_table(f: dict[str, object]) -> None:
    print(f"flow-install: {f['flows']} flows, {f['runs']} runs each, medians")
    print(f"  {'plumb switch (bundle)':<28} {f['ours_median_s']:>8} s   runs {f['ours_runs_s']}")
    print(
        f"  {'ovs-ofctl --bundle add-flows':<28} {f['ovs_ofctl_median_s']:>8} s   "
        f"runs {f['ovs_ofctl_runs_s']}"
    )
    print(f"  ratio ours/ovs-ofctl          {f['ratio']:>8}   (target <= 1.5)")
    print(f"  peak RSS of this process      {f['peak_rss_mb']:>8} MB")
