"""A small world whose compiled flows are kept as golden ovs-ofctl text (unit tier) and installed
on a real bridge (OVS tier): two local web pods with different named ports, remote clients,
ipBlocks with excepts, a port range, egress to a namespace and to the internet, an allow-all."""

from __future__ import annotations

import os
from pathlib import Path

from flows.flow import Flow
from flows.ofctl import render_flows
from flows.policy import PolicyFlows
from tests.unit.netpol.helpers import labels, load, namespace, pod, policy

GOLDEN_DIR = Path(__file__).parent / "golden"
PORT_NAMES = {3: "web-a", 4: "web-b"}
NAMESPACES = [namespace("x", team="red"), namespace("y", team="blue")]
PODS = [
    pod("x", "a", "10.244.0.3", {"http": 8080}, app="web"),
    pod("x", "b", "10.244.0.4", {"http": 9090}, app="web"),
    pod("y", "c", "10.244.1.5", {"dns": (53, "UDP")}, node="node-b", app="client"),
    pod("y", "d", "10.244.1.6", node="node-b", app="client"),
    pod("y", "e", "10.244.1.7", node="node-b", app="db"),
]
LOCAL = {("x", "a"): 3, ("x", "b"): 4}
POLICIES = [
    policy(
        "x",
        "web",
        podSelector=labels(app="web"),
        ingress=[
            {
                "from": [
                    {"namespaceSelector": labels(team="blue"), "podSelector": labels(app="client")},
                    {"ipBlock": {"cidr": "172.16.0.0/16", "except": ["172.16.1.0/24"]}},
                ],
                "ports": [
                    {"port": "http"},
                    {"port": 80},
                    {"protocol": "UDP", "port": 1000, "endPort": 1010},
                ],
            }
        ],
    ),
    policy(
        "x",
        "egress",
        podSelector=labels(app="web"),
        policyTypes=["Egress"],
        egress=[
            {
                "to": [{"namespaceSelector": labels(team="blue")}],
                "ports": [{"protocol": "UDP", "port": 53}],
            },
            {
                "to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8"]}}],
                "ports": [{"port": 443}],
            },
        ],
    ),
    policy(
        "x",
        "from-db",
        ingress=[{"from": [{"namespaceSelector": {}, "podSelector": labels(app="db")}]}],
    ),
]


def golden_flows(round_: int = 1) -> list[Flow]:
    model = load(NAMESPACES, PODS, POLICIES, LOCAL)
    flows = PolicyFlows(round_)
    for obj in POLICIES:
        key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
        compiled = model.compile(key)
        flows.update_policy(f"{key[0]}/{key[1]}", compiled.rules, compiled.isolated, 0.0)
    flows.set_node_addresses("10.244.0.1", ["192.168.77.11"])
    return flows.all_flows()


def golden_lines(name: str) -> list[str]:
    return (GOLDEN_DIR / f"{name}.flows").read_text().splitlines()


def check_golden(name: str, lines: list[str]) -> None:
    """Compare sorted lines with the golden (PLUMB_UPDATE_GOLDEN=1 rewrites it; review the diff)."""
    path = GOLDEN_DIR / f"{name}.flows"
    got = sorted(lines)
    if os.environ.get("PLUMB_UPDATE_GOLDEN") == "1":
        path.write_text("\n".join(got) + "\n")
    want = sorted(path.read_text().splitlines())
    assert got == want, "\n".join(
        [f"- {w}" for w in want if w not in got] + [f"+ {g}" for g in got if g not in want]
    )


def rendered(round_: int = 1) -> list[str]:
    return render_flows(golden_flows(round_), PORT_NAMES)
