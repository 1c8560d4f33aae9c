"""`plumbctl flows` and `plumbctl trace` against a real bridge: the skeleton, a gateway, two pods
and one ingress policy (x/b takes TCP 80 from x/a only), installed through Plumb's switch.

Set PLUMB_RECORD_FIXTURES=1 to rewrite tests/unit/fixtures/inspect/ from this bridge (the unit
tests of flows.annotate read those captures).
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from controller.bridge import BridgeSettings, ensure_node_bridge
from controller.switch import Switch
from flows.cookie import Category, Cookie
from flows.fields import IP_PROTO_TCP
from flows.pod import LocalNode, PodPort, gateway_flows, pod_flows
from flows.policy import (
    Direction,
    LocalTarget,
    Peers,
    PolicyFlows,
    PortRange,
    Rule,
    RuleKey,
)
from flows.skeleton import skeleton_flows
from plumbctl.main import cli

pytestmark = pytest.mark.ovs

FIXTURES = Path(__file__).parents[1] / "unit" / "fixtures" / "inspect"
NODE = LocalNode(pod_cidr="10.10.1.0/24", gateway_ip="10.10.1.1", gateway_mac="0a:58:0a:0a:01:01")
POD_A = PodPort(ofport=3, ip="10.10.1.5", mac="0a:58:0a:0a:01:05")
POD_B = PodPort(ofport=4, ip="10.10.1.6", mac="0a:58:0a:0a:01:06")
PODS = {"x/a": POD_A, "x/b": POD_B}


def _add_pod_port(ovs, bridge: str, ref: str, pod: PodPort) -> None:
    """An internal port standing for the pod's veth, with the external_ids the CNI writes."""
    namespace, name = ref.split("/")
    port = f"{name}-{uuid.uuid4().hex[:6]}"
    ovs.vsctl(
        *("add-port", bridge, port, "--", "set", "interface", port, "type=internal"),
        f"ofport_request={pod.ofport}",
        "external_ids:plumb.type=pod",
        f"external_ids:plumb.pod-namespace={namespace}",
        f"external_ids:plumb.pod-name={name}",
        f'external_ids:plumb.ip="{pod.ip}/24"',
        f'external_ids:plumb.mac="{pod.mac}"',
    )


@pytest.fixture(scope="module")
def bridge(ovs):
    name = f"br-{uuid.uuid4().hex[:8]}"
    ensure_node_bridge(
        ovs.db_remote,
        BridgeSettings(name=name, datapath_type="netdev", tunnel_type="geneve"),
        with_gateway=True,
    )
    for ref, pod in PODS.items():
        _add_pod_port(ovs, name, ref, pod)
    ovs.vsctl("set", "bridge", name, 'external_ids:plumb.round="1"')
    deadline = time.monotonic() + 5
    while not ovs.mgmt_socket(name).exists():
        assert time.monotonic() < deadline, "bridge management socket never appeared"
        time.sleep(0.02)
    switch = Switch(ovs.mgmt_socket(name), request_timeout=5, reconnect_max_delay=0.2)
    switch.start()
    switch.wait_connected(10)
    try:
        install(switch)
    finally:
        switch.stop()
    yield name
    ovs.vsctl("--if-exists", "del-br", name)


def install(switch: Switch) -> PolicyFlows:
    switch.replace_flows("pipeline", skeleton_flows(1))
    switch.replace_flows("node/local", gateway_flows(NODE, Cookie(1, Category.NODE, 0).value))
    for ref, pod in PODS.items():
        switch.replace_flows(
            f"pod/{ref}", pod_flows(pod, NODE, Cookie(1, Category.POD, pod.ofport).value)
        )
    policy = PolicyFlows(1)
    target = LocalTarget(POD_B.ofport, POD_B.ip)
    rule = Rule(
        RuleKey("uid-b", Direction.INGRESS, 0),
        frozenset({target}),
        Peers(ips=frozenset({POD_A.ip})),
        frozenset({PortRange(IP_PROTO_TCP, 80, 80)}),
    )
    changed = policy.update_policy("x/b-allow-a", [rule], {Direction.INGRESS: [target]}, now=0.0)
    switch.replace_many({owner: policy.owner_flows(owner) for owner in changed})
    return policy


def run(ovs, bridge: str, *args: str) -> str:
    where = ("--ovs-rundir", str(ovs.rundir), "--bridge", bridge, "--lab", "no-such-lab")
    result = CliRunner().invoke(cli, [*args, *where], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def flows_json(ovs, bridge: str, *args: str) -> list[dict[str, Any]]:
    flows: list[dict[str, Any]] = json.loads(run(ovs, bridge, "flows", "-o", "json", *args))[
        "flows"
    ]
    return flows


def test_every_flow_is_annotated_with_its_owner_and_counters(ovs, bridge):
    flows = flows_json(ovs, bridge)
    assert flows and all(isinstance(f["n_packets"], int) for f in flows)
    owners = {(f["owner"]["category"], f["owner"]["name"]) for f in flows}
    assert ("pod", "x/a") in owners and ("pod", "x/b") in owners
    assert ("pipeline", "") in owners
    assert ("policy", "ingress isolation of x/b") in owners
    pod_a = [f for f in flows if f["cookie"] == hex(Cookie(1, Category.POD, 3).value)]
    assert len(pod_a) == 5 and all(f["owner"]["name"] == "x/a" for f in pod_a)
    clause = next(
        f for f in flows if "nw_src=10.10.1.5" in f["match"] and "conjunction" in f["actions"]
    )
    assert clause["owner"]["name"].startswith("clause from 10.10.1.5 (x/a) of rule ")


def test_table_filter_keeps_one_table(ovs, bridge):
    flows = flows_json(ovs, bridge, "--table", "IngressDefaultRule")
    assert {f["table"] for f in flows} == {"IngressDefaultRule"}
    assert len(flows) == 2  # the isolation drop of x/b and the miss


def test_pod_filter_keeps_the_pod_and_the_policy_flows_naming_it(ovs, bridge):
    flows = flows_json(ovs, bridge, "--pod", "x/b")
    categories = {f["owner"]["category"] for f in flows}
    assert categories == {"pod", "policy"}
    assert all(
        f["owner"]["name"] == "x/b" or "reg1=0x4" in f["match"] or "10.10.1.6" in f["match"]
        for f in flows
    )
    assert not any(f["owner"]["name"] == "x/a" for f in flows)


def test_printed_flows_paste_back_into_ovs_ofctl(ovs, bridge, tmp_path):
    text = run(ovs, bridge, "flows")
    lines = [line for line in text.splitlines() if line.startswith(" cookie=")]
    assert lines and all("  # " in line for line in lines)
    before = no_stats_dump(ovs, bridge)
    assert sorted(before) == sorted(line.split("  # ")[0] for line in lines)
    # The whole output, comments and all, restores an emptied bridge exactly ...
    (tmp_path / "flows.txt").write_text(text)
    ovs.ofctl("-O", "OpenFlow15", "--names", "del-flows", bridge)
    ovs.ofctl("-O", "OpenFlow15", "--names", "add-flows", bridge, str(tmp_path / "flows.txt"))
    assert no_stats_dump(ovs, bridge) == before
    # ... and one line, without its annotation, goes back through add-flow as it is.
    drop = next(line.split("  # ")[0] for line in lines if "table=IngressDefaultRule" in line)
    strict = drop.split(", ", 1)[1].replace(" actions=drop", "")
    ovs.ofctl("-O", "OpenFlow15", "--names", "--strict", "del-flows", bridge, strict)
    assert no_stats_dump(ovs, bridge) != before
    ovs.ofctl("-O", "OpenFlow15", "--names", "add-flow", bridge, drop)
    assert no_stats_dump(ovs, bridge) == before


def no_stats_dump(ovs, bridge: str) -> list[str]:
    out = ovs.ofctl("-O", "OpenFlow15", "--names", "--no-stats", "dump-flows", bridge)
    return sorted(line for line in out.splitlines() if line.strip())


def trace_json(ovs, bridge: str, port: int) -> dict[str, Any]:
    args = ("trace", "--from", "x/a", "--to", "x/b", "--port", str(port), "-o", "json")
    result: dict[str, Any] = json.loads(run(ovs, bridge, *args))
    return result


def test_trace_of_an_allowed_packet_is_delivered_by_the_rule(ovs, bridge):
    result = trace_json(ovs, bridge, 80)
    assert result["delivered"] is True, result["verdict"]
    hop = result["hops"][0]
    assert hop["verdict"]["kind"] == "delivered" and hop["verdict"]["port"] == POD_B.ofport
    assert "delivered to port 4 (pod x/b)" in result["verdict"]
    assert hop["verdict"]["allowed_by"], "the rule's conjunction should show in the walk"
    tables = [s["table"] for s in hop["steps"]]
    assert tables[0] == "PipelineRootClassifier" and tables[-1] == "Output"
    assert "IngressRule" in tables and "IngressDefaultRule" not in tables
    spoof = next(s for s in hop["steps"] if s["table"] == "SpoofGuard")
    assert spoof["owner"] == "pod x/a"


def test_trace_of_a_dropped_packet_names_the_table_and_the_pod(ovs, bridge):
    result = trace_json(ovs, bridge, 81)
    assert result["delivered"] is False
    verdict = result["hops"][0]["verdict"]
    assert verdict["kind"] == "dropped" and verdict["table"] == "IngressDefaultRule"
    assert result["verdict"].startswith("dropped by IngressDefaultRule for x/b")


def test_human_trace_prints_the_walk_table_by_table(ovs, bridge):
    text = run(ovs, bridge, "trace", "--from", "x/a", "--to", "x/b", "--port", "81")
    assert "SpoofGuard" in text and "[pod x/a]" in text
    assert "[policy ingress isolation of x/b]" in text
    assert text.rstrip().endswith("verdict: dropped by IngressDefaultRule for x/b")


def _walk(trace: str) -> list[str]:
    """The table-by-table lines of a trace (stable across runs, unlike recirc ids)."""
    lines = [line.strip() for line in trace.splitlines() if re.match(r"^\s*\d+\. ", line)]
    return [_unnamed(line) for line in lines]


def _unnamed(line: str) -> str:
    """Port names differ per run (they carry a random suffix)."""
    return re.sub(r'"[^"]*"', '"PORT"', line)


def _flows_only(dump: str) -> list[str]:
    """Dump lines without the volatile statistics."""
    volatile = r" (duration|n_packets|n_bytes|idle_age|hard_age)=[^,]*,"
    return sorted(
        _unnamed(re.sub(volatile, "", line)) for line in dump.splitlines() if "table=" in line
    )


def test_stored_fixtures_are_what_ovs_prints_today(ovs, bridge):
    """tests/unit/test_annotate.py parses captures; this keeps them true to real OVS (set
    PLUMB_RECORD_FIXTURES=1 to rewrite them)."""
    record = bool(os.environ.get("PLUMB_RECORD_FIXTURES"))
    dump = ovs.ofctl("-O", "OpenFlow15", "--names", "dump-flows", bridge)
    captures = {"dump_policy.txt": dump}
    for port, name in ((80, "trace_allowed.txt"), (81, "trace_dropped.txt")):
        flow = (
            f"in_port={POD_A.ofport},tcp,dl_src={POD_A.mac},dl_dst={POD_B.mac},nw_src={POD_A.ip},"
            f"nw_dst={POD_B.ip},nw_ttl=64,tp_src=40000,tp_dst={port},tcp_flags=syn"
        )
        ct = ["--ct-next", "trk,new"] * 4
        captures[name] = ovs.appctl("ofproto/trace", bridge, flow, *ct)
    for name, text in captures.items():
        if record:
            FIXTURES.mkdir(parents=True, exist_ok=True)
            (FIXTURES / name).write_text(text)
        stored = (FIXTURES / name).read_text()
        if name.startswith("trace"):
            assert _walk(text) == _walk(stored), name
        else:
            assert _flows_only(text) == _flows_only(stored), name
