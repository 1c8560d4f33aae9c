"""`plumbctl policy` against a two-node lab: the demo's pods (client and db on node1, web on
node2) and its policy (web takes only client, on TCP 80), then an invalid policy beside it, then
a flow deleted by hand. The command must say what the datapath holds, not what it should."""

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

POLICY = "demo/web-allow-client"
BAD_POLICY = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: bad, namespace: demo}
spec:
  podSelector: {}
  ingress: [{ports: [{port: 90, endPort: 80}]}]
"""


@pytest.fixture(scope="module")
def lab(module_lab: LabFactory) -> Lab:
    lab = module_lab("--nodes", "2")
    lab.apply(PODS_YAML, POLICY_YAML)
    wait_in_sync(lab)
    return lab


def plumbctl(lab: Lab, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "plumbctl", "policy", *args, "--lab", lab.name]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=REPO, check=False)


def as_json(lab: Lab, *args: str) -> Any:
    done = plumbctl(lab, *args, "-o", "json")
    assert done.returncode in (0, 1), done.stderr
    return json.loads(done.stdout)


def wait_in_sync(lab: Lab, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not as_json(lab)["in_sync"]:
        assert time.monotonic() < deadline, plumbctl(lab).stdout
        time.sleep(0.2)


def test_a_realised_policy_its_pods_per_node_and_its_rule(lab: Lab) -> None:
    done = plumbctl(lab, POLICY, "-o", "json")
    assert done.returncode == 0, done.stdout + done.stderr
    [policy] = json.loads(done.stdout)["policies"]
    assert policy["realised"] and policy["error"] is None
    assert policy["policy_types"] == ["Ingress"]
    assert policy["pods"] == {"node1": [], "node2": ["demo/web"]}
    [rule] = policy["rules"]
    assert (rule["rule"], rule["peers"], rule["ports"]) == ("ingress[0]", "demo/client", "TCP/80")
    assert list(rule["nodes"]) == ["node2"] and rule["nodes"]["node2"]["realised"]
    assert rule["nodes"]["node2"]["conj_id"] & 0x7FFFFFFF > 0  # bit 31: the round's parity


def test_counters_count_the_connections_the_rule_allowed(lab: Lab) -> None:
    def counters() -> tuple[int, int]:
        [policy] = as_json(lab, POLICY)["policies"]
        node2 = policy["rules"][0]["nodes"]["node2"]
        return node2["new"], node2["packets"]

    new, packets = counters()
    for _ in range(3):
        assert lab.connected("demo/client", "demo/web", 80)
    assert not lab.connected("demo/db", "demo/web", 80)  # dropped: not this rule's
    new_after, packets_after = counters()
    assert new_after - new >= 3 and packets_after - packets >= 3 * 3


def test_human_output_is_a_table_of_rules(lab: Lab) -> None:
    done = plumbctl(lab, POLICY)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"{POLICY}  realised  (Ingress)"
    assert lines[1].split() == ["applies", "to", "node1:", "none;", "node2:", "demo/web"]
    assert lines[2].split()[:3] == ["RULE", "PEERS", "PORTS"]
    assert lines[3].split()[:4] == ["ingress[0]", "demo/client", "TCP/80", "node2"]
    assert lines[3].split()[-1] == "realised"


def test_an_invalid_policy_shows_its_error_and_the_others_stay_realised(lab: Lab) -> None:
    lab.apply(BAD_POLICY)
    try:
        done = plumbctl(lab, "-o", "json")
        assert done.returncode == 1  # a policy shown is not in force
        data = {p["policy"]: p for p in json.loads(done.stdout)["policies"]}
        assert data["demo/bad"]["error"] == (
            "NetworkPolicy demo/bad: spec.ingress[0].ports[0].endPort: 80 is below port 90"
        )
        assert not data["demo/bad"]["realised"] and data[POLICY]["realised"]
        assert "error: NetworkPolicy demo/bad" in plumbctl(lab, "demo/bad").stdout
    finally:
        lab.delete(BAD_POLICY)


def test_a_flow_deleted_by_hand_is_reported_missing(lab: Lab) -> None:
    wait_in_sync(lab)
    mgmt = str(lab.layout.node_by_name("node2").ovs_rundir / "br-int.mgmt")
    flows = lab.flows("node2")
    drop = next(
        line for line in flows.splitlines() if "IngressDefaultRule" in line and "reg1=" in line
    )
    match = drop.split("priority=")[1].split(" actions")[0]
    ofctl = ["ovs-ofctl", "-O", "OpenFlow15", "--names", "--strict", "del-flows", mgmt]
    subprocess.run([*ofctl, f"table=IngressDefaultRule,priority={match}"], check=True)
    done = plumbctl(lab, POLICY, "-o", "json")
    assert done.returncode == 1
    [policy] = json.loads(done.stdout)["policies"]
    assert not policy["realised"]
    assert policy["missing"] == {"node2": ["ingress isolation of demo/web"]}
    assert "missing on node2: ingress isolation of demo/web" in plumbctl(lab, POLICY).stdout


def test_an_unknown_policy_is_an_error(lab: Lab) -> None:
    done = plumbctl(lab, "demo/nope")
    assert done.returncode == 1
    assert "no NetworkPolicy demo/nope (known: demo/web-allow-client)" in done.stderr
