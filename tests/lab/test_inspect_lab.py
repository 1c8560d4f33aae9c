"""`plumbctl flows | trace | explain | status` against a two-node lab: the demo's pods (client
and db on node1, web on node2) and its policy (web takes only client, on TCP 80).

The policy tests need the agents to enforce NetworkPolicy; until they install policy flows, those
tests skip and say so. The planted mismatch deletes web's isolation drop on node2 by hand.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import pytest

from lab.demo import PODS_YAML, POLICY_YAML
from tests.lab.conftest import REPO, Lab, LabFactory

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def lab(module_lab: LabFactory) -> Lab:
    lab = module_lab("--nodes", "2")
    lab.apply(PODS_YAML)
    return lab


def plumbctl(lab: Lab, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "plumbctl", *args, "--lab", lab.name]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO, check=False)
    if check and done.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} exited {done.returncode}\n{done.stdout}{done.stderr}"
        )
    return done


def as_json(lab: Lab, *args: str, check: bool = True) -> Any:
    return json.loads(plumbctl(lab, *args, "-o", "json", check=check).stdout)


def policy_flows(lab: Lab, node: str) -> int:
    data = as_json(lab, "flows", "--node", node)
    return sum(1 for f in data["flows"] if f["owner"]["category"] == "policy")


def with_policy(lab: Lab) -> None:
    """Apply the demo policy; skip when the agents do not enforce NetworkPolicy yet."""
    lab.apply(POLICY_YAML)
    deadline = time.monotonic() + 10
    while policy_flows(lab, "node2") == 0:
        if time.monotonic() > deadline:
            pytest.skip("the agents install no NetworkPolicy flows yet")
        time.sleep(0.2)


def test_flows_of_a_pod_are_found_on_its_node_and_owned_by_it(lab: Lab) -> None:
    data = as_json(lab, "flows", "--pod", "demo/web")
    assert data["node"] == "node2"
    own = [f for f in data["flows"] if f["owner"]["category"] == "pod"]
    assert len(own) == 5 and {f["owner"]["name"] for f in own} == {"demo/web"}
    assert all(f["n_packets"] is not None for f in data["flows"])


def test_flows_name_peer_nodes_and_the_pipeline(lab: Lab) -> None:
    data = as_json(lab, "flows", "--node", "node1", "--table", "L3Forwarding")
    owners = {f["owner"]["category"] + " " + f["owner"]["name"] for f in data["flows"]}
    assert "node node2" in owners and "pipeline " in owners
    assert {"pod demo/client", "pod demo/db"} <= owners


def test_status_reports_a_ready_agent_its_pods_and_round(lab: Lab) -> None:
    data = as_json(lab, "status", "--node", "node1")
    assert data["agent"]["ready"] and data["agent"]["gates"]["network"]
    assert {p["pod"] for p in data["pods"]} == {"demo/client", "demo/db"}
    assert data["round"] >= 1 and data["flows_per_table"]["Output"] == 2
    assert data["ovs_version"].startswith("ovs-vswitchd (Open vSwitch)")


def test_trace_across_nodes_is_delivered_to_the_pod(lab: Lab) -> None:
    data = as_json(lab, "trace", "--from", "demo/client", "--to", "demo/web", "--port", "80")
    assert [h["node"] for h in data["hops"]] == ["node1", "node2"]
    assert data["hops"][0]["verdict"]["kind"] == "tunnelled"
    assert data["hops"][0]["verdict"]["text"] == "tunnelled to node node2 (172.30.0.12)"
    assert data["delivered"] and "(pod demo/web)" in data["verdict"]


def test_trace_of_a_blocked_pair_names_the_policy_that_isolates_it(lab: Lab) -> None:
    with_policy(lab)
    data = as_json(lab, "trace", "--from", "demo/db", "--to", "demo/web", "--port", "80")
    assert not data["delivered"]
    verdict = data["hops"][-1]["verdict"]
    assert verdict["table"] == "IngressDefaultRule"
    assert verdict["isolated_by"] == ["demo/web-allow-client"]
    assert data["verdict"] == (
        "dropped by IngressDefaultRule for demo/web "
        "(isolated for ingress by policy demo/web-allow-client)"
    )
    allowed = as_json(lab, "trace", "--from", "demo/client", "--to", "demo/web", "--port", "80")
    assert allowed["delivered"] and "demo/web-allow-client ingress[0]" in allowed["verdict"]


def test_explain_all_finds_no_mismatch_then_a_planted_one(lab: Lab) -> None:
    with_policy(lab)
    clean = as_json(lab, "explain", "--all", "--ports", "80,81")
    assert clean["mismatches"] == 0, [r for r in clean["results"] if not r["agree"]]
    denied = [r for r in clean["results"] if not r["model"]["allowed"]]
    assert len(denied) == 3  # db->web 80 and 81, client->web 81
    # Plant one: web's isolation drop on node2, deleted by hand (exactly that flow).
    flows = as_json(lab, "flows", "--node", "node2", "--table", "IngressDefaultRule")["flows"]
    drop = next(f for f in flows if f["owner"]["name"] == "ingress isolation of demo/web")
    mgmt = str(lab.layout.node_by_name("node2").ovs_rundir / "br-int.mgmt")
    strict = f"table=IngressDefaultRule,priority={drop['priority']},{drop['match']}"
    ofctl = ["ovs-ofctl", "-O", "OpenFlow15", "--names", "--strict", "del-flows", mgmt, strict]
    subprocess.run(ofctl, check=True)
    planted = as_json(lab, "explain", "--all", "--ports", "80,81", check=False)
    wrong = {(r["from"], r["to"], r["port"]) for r in planted["results"] if not r["agree"]}
    assert wrong == {
        ("demo/db", "demo/web", 80),
        ("demo/db", "demo/web", 81),
        ("demo/client", "demo/web", 81),
    }
    assert plumbctl(lab, "explain", "--all", "--ports", "80,81", check=False).returncode == 1


DB_DENY_ALL = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db-deny-all, namespace: demo}
spec:
  podSelector: {matchLabels: {app: db}}
  policyTypes: [Ingress]
"""


def last_sync(lab: Lab, node: str) -> dict[str, Any]:
    sync: dict[str, Any] = as_json(lab, "status", "--node", node)["last_sync"]
    return sync


def wait_synced_after(lab: Lab, node: str, after: float, timeout: float = 15) -> dict[str, Any]:
    """The node's last sync once it is in step with a source change made after `after`."""
    deadline = time.monotonic() + timeout
    while True:
        sync = last_sync(lab, node)
        change = sync["source_last_change"] or 0
        if change >= after and sync["in_step"]:
            return sync
        assert time.monotonic() < deadline, f"no sync after {after}: {sync}"
        time.sleep(0.2)


def test_status_last_sync_moves_forward_when_a_policy_is_applied(lab: Lab) -> None:
    before = last_sync(lab, "node1")
    assert before["source"] == "manifests" and before["in_step"] is True
    assert before["timestamp"] and before["age_seconds"] >= 0
    assert time.time() - before["timestamp"] == pytest.approx(before["age_seconds"], abs=5)
    applied = time.time()
    lab.apply(DB_DENY_ALL)
    sync = wait_synced_after(lab, "node1", applied)
    assert sync["timestamp"] > before["timestamp"] and sync["timestamp"] >= applied
    assert sync["timestamp"] >= sync["source_last_change"]
    # In step means committed: db's isolation drop is on node1 already.
    drops = as_json(lab, "flows", "--node", "node1", "--table", "IngressDefaultRule")["flows"]
    assert "ingress isolation of demo/db" in {f["owner"]["name"] for f in drops}
    human = plumbctl(lab, "status", "--node", "node1").stdout
    assert "  last sync    " in human and "in step with manifests" in human
    # Node2 holds no db: it still syncs (its policy model sees the policy), just no flows.
    assert wait_synced_after(lab, "node2", applied)["timestamp"] >= applied
    removed = time.time()
    lab.delete(DB_DENY_ALL)
    after = wait_synced_after(lab, "node1", removed)
    assert after["timestamp"] > sync["timestamp"]
    drops = as_json(lab, "flows", "--node", "node1", "--table", "IngressDefaultRule")["flows"]
    assert "ingress isolation of demo/db" not in {f["owner"]["name"] for f in drops}
