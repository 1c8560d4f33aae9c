"""`plumbctl explain` on one node outside a lab: the node's own OVS (`--ovs-rundir`) and the
cluster's objects from a manifests directory (`--manifests`) or an API server (`--kubeconfig`,
the fake one), as on a real cluster's node. A two-node lab provides the nodes (a private OVS and
a real agent each) and the manifests directory its agents read; `plumbctl` is told nothing of
the lab (`--lab` names none).

The demo's pods (client and db on node1, web on node2) and policy (web takes only client, on
TCP 80). A pair with both ends on the node is judged whole; with the destination elsewhere, on
the source's egress; with the source elsewhere, on the destination's ingress.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from lab.demo import PODS_YAML, POLICY_YAML
from lab.fakeapi import FakeApiServer
from tests.lab.conftest import REPO, Lab, LabFactory

pytestmark = pytest.mark.lab

ENCAP: dict[str, str] = {}  # lab name -> its encapsulation
PLURALS = {
    "Pod": "pods",
    "Node": "nodes",
    "Namespace": "namespaces",
    "NetworkPolicy": "networkpolicies",
}


@pytest.fixture(scope="module", params=["geneve", "none"])
def lab(module_lab: LabFactory, request: pytest.FixtureRequest) -> Lab:
    """Two nodes, tunnelled (geneve) or routed (none: the kernels route between nodes)."""
    lab = module_lab("--nodes", "2", "--encap", request.param)
    ENCAP[lab.name] = request.param
    lab.apply(PODS_YAML)
    lab.apply(POLICY_YAML)
    return lab


def write_kubeconfig(path: Path, url: str) -> Path:
    path.write_text(
        "apiVersion: v1\nkind: Config\n"
        f"clusters:\n- name: fake\n  cluster:\n    server: {url}\n"
        "users:\n- name: me\n  user:\n    token: test-token\n"
        "contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: me\n"
        "current-context: fake\n"
    )
    return path


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "plumbctl", *args, "--lab", "no-such-lab"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO, check=False)
    if check and done.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} exited {done.returncode}\n{done.stdout}{done.stderr}"
        )
    return done


def on_node(lab: Lab, node: str, *args: str, objects: tuple[str, ...] = ()) -> list[str]:
    rundir = lab.layout.node_by_name(node).ovs_rundir
    return [*args, "--ovs-rundir", str(rundir), *(objects or ("--manifests", manifests(lab)))]


def manifests(lab: Lab) -> str:
    return str(lab.layout.manifests_dir)


def explain_all(lab: Lab, node: str, *objects: str, check: bool = True) -> dict[str, Any]:
    args = on_node(lab, node, "explain", "--all", "--ports", "80,81", "-o", "json", objects=objects)
    data: dict[str, Any] = json.loads(run(*args, check=check).stdout)
    return data


def sent_on(lab: Lab) -> str:
    """The verdict of a packet node1 sends on to node2."""
    if ENCAP[lab.name] == "none":
        return "sent to the node's gateway"
    return "tunnelled to node node2 (172.30.0.12)"


def by_case(data: dict[str, Any]) -> dict[tuple[str, str, int], dict[str, Any]]:
    return {(r["from"], r["to"], r["port"]): r for r in data["results"]}


def lab_explain(lab: Lab) -> subprocess.CompletedProcess[str]:
    """The lab's own explain: every node's OVS, the whole path of each pair."""
    cmd = [sys.executable, "-m", "plumbctl", "explain", "--all", "--ports", "80,81"]
    cmd += ["--lab", lab.name, "-o", "json"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO, check=False)


def wait_policy_flows(lab: Lab) -> None:
    """The policy is in force on node2 (the lab's own explain agrees with the datapath)."""
    deadline = time.monotonic() + 15
    while (done := lab_explain(lab)).returncode != 0:
        assert time.monotonic() < deadline, done.stdout + done.stderr
        time.sleep(0.3)


def test_each_node_judges_its_part_and_together_they_match_the_whole_path(lab: Lab) -> None:
    wait_policy_flows(lab)
    whole = by_case(json.loads(lab_explain(lab).stdout))
    node1, node2 = by_case(explain_all(lab, "node1")), by_case(explain_all(lab, "node2"))
    assert not [c for c, r in {**node1, **node2}.items() if not r["agree"]]
    # node1 sees every pair but web -> web; node2 only the pairs with web at one end.
    assert set(node1) == set(whole)
    assert set(node2) == {c for c in whole if "demo/web" in c[:2]}
    for case, r in whole.items():
        assert r["judged"] == "path"
        parts = [n[case] for n in (node1, node2) if case in n]
        if len(parts) == 1 or parts[0]["judged"] == "path":
            assert parts[0]["judged"] == "path" and parts[0]["agree"]
            assert parts[0]["datapath"]["delivered"] == r["datapath"]["delivered"], case
            continue
        egress = next(p for p in parts if p["judged"] == "egress")
        ingress = next(p for p in parts if p["judged"] == "ingress")
        # The whole path delivers exactly when the source's node sends it on and the
        # destination's node delivers it; the model's verdict is both sides' verdicts.
        passed = egress["datapath"]["passed"] and ingress["datapath"]["passed"]
        assert passed == r["datapath"]["delivered"], case
        assert (egress["expected"] and ingress["expected"]) == r["model"]["allowed"], case
        assert egress["datapath"]["delivered"] is None
    # db -> web 80: node1 sends it on (db's egress is open), node2 drops it (web's ingress).
    db_web = ("demo/db", "demo/web", 80)
    assert node1[db_web]["judged"] == "egress" and node1[db_web]["expected"] is True
    assert node1[db_web]["datapath"]["verdict"] == sent_on(lab)
    assert node2[db_web]["judged"] == "ingress" and node2[db_web]["expected"] is False
    assert node2[db_web]["datapath"]["verdict"].startswith("dropped by IngressDefaultRule")


def test_one_pair_human_output_says_what_is_judged(lab: Lab) -> None:
    out = run(*on_node(lab, "node2", "explain", "demo/db", "demo/web", "--port", "80")).stdout
    assert "datapath: not delivered on node2: dropped by IngressDefaultRule for demo/web" in out
    assert "judged:   ingress only, on node2" in out and out.rstrip().endswith("agree")
    out = run(*on_node(lab, "node1", "explain", "demo/client", "demo/web", "--port", "80")).stdout
    assert f"datapath: sent on from node1: {sent_on(lab)}" in out
    assert "judged:   egress only, on node1" in out


def test_any_manifests_layout_the_agent_reads_will_do(lab: Lab, tmp_path: Path) -> None:
    """One multi-document `kind: List` file in a subdirectory, as the manifests source takes it."""
    items = [yaml.safe_load(f.read_text()) for f in sorted(Path(manifests(lab)).glob("*.yaml"))]
    (tmp_path / "cluster").mkdir()
    (tmp_path / "cluster" / "all.yaml").write_text(
        yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": items})
    )
    (tmp_path / ".half-written.yaml").write_text("kind: [")  # skipped, as by the agent
    expected = explain_all(lab, "node2")
    got = explain_all(lab, "node2", "--manifests", str(tmp_path))
    assert by_case(got).keys() == by_case(expected).keys() and got["mismatches"] == 0


def test_kubeconfig_reads_the_objects_from_the_api_server(lab: Lab, tmp_path: Path) -> None:
    api = FakeApiServer()
    for f in sorted(Path(manifests(lab)).glob("*.yaml")):
        obj = yaml.safe_load(f.read_text())
        api.create(PLURALS[obj["kind"]], obj)
    with api:
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", api.url)
        got = explain_all(lab, "node1", "--kubeconfig", str(kubeconfig))
    expected = explain_all(lab, "node1")
    strip = lambda d: {c: (r["judged"], r["expected"], r["agree"]) for c, r in by_case(d).items()}  # noqa: E731
    assert strip(got) == strip(expected) and got["mismatches"] == 0


def test_errors_name_what_is_missing(lab: Lab) -> None:
    rundir = str(lab.layout.node_by_name("node1").ovs_rundir)
    done = run("explain", "--all", "--ovs-rundir", rundir, check=False)
    assert done.returncode == 1 and "--manifests DIR or --kubeconfig FILE" in done.stderr
    done = run(*on_node(lab, "node1", "explain", "--all", "--node", "node9"), check=False)
    assert done.returncode == 1 and "no Node object named 'node9'" in done.stderr
    trace = ("trace", "--from", "demo/web", "--to", "demo/db", "--port", "80")
    done = run(*on_node(lab, "node1", *trace), check=False)
    assert done.returncode == 1 and "run plumbctl on node2" in done.stderr
    done = run("explain", "--all", "--manifests", "/nonexistent", check=False)
    assert done.returncode == 1 and "not a directory" in done.stderr


def test_a_flow_deleted_by_hand_is_a_mismatch_on_its_node_only(lab: Lab) -> None:
    flows = json.loads(
        run(*on_node(lab, "node2", "flows", "--table", "IngressDefaultRule", "-o", "json")).stdout
    )["flows"]
    drop = next(f for f in flows if f["owner"]["name"] == "ingress isolation of demo/web")
    mgmt = str(lab.layout.node_by_name("node2").ovs_rundir / "br-int.mgmt")
    strict = f"table=IngressDefaultRule,priority={drop['priority']},{drop['match']}"
    ofctl = ["ovs-ofctl", "-O", "OpenFlow15", "--names"]
    subprocess.run([*ofctl, "--strict", "del-flows", mgmt, strict], check=True)
    try:
        assert explain_all(lab, "node1")["mismatches"] == 0  # node1's parts are untouched
        planted = explain_all(lab, "node2", check=False)
        wrong = {c for c, r in by_case(planted).items() if not r["agree"]}
        assert wrong == {
            ("demo/db", "demo/web", 80),
            ("demo/db", "demo/web", 81),
            ("demo/client", "demo/web", 81),
        }
        assert {by_case(planted)[c]["judged"] for c in wrong} == {"ingress"}
        args = on_node(lab, "node2", "explain", "--all", "--ports", "80,81")
        assert run(*args, check=False).returncode == 1
    finally:
        subprocess.run([*ofctl, "add-flow", mgmt, drop["flow"]], check=True)
    assert explain_all(lab, "node2")["mismatches"] == 0


DB_EGRESS_DENY = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db-no-egress, namespace: demo}
spec:
  podSelector: {matchLabels: {app: db}}
  policyTypes: [Egress]
"""


def test_an_egress_policy_is_judged_on_the_source_node(lab: Lab) -> None:
    lab.apply(DB_EGRESS_DENY)
    try:
        wait_policy_flows(lab)
        node1 = by_case(explain_all(lab, "node1"))
        assert node1[("demo/db", "demo/web", 80)]["judged"] == "egress"
        assert node1[("demo/db", "demo/web", 80)]["expected"] is False
        assert node1[("demo/db", "demo/web", 80)]["datapath"]["passed"] is False
        assert node1[("demo/db", "demo/client", 80)]["datapath"]["delivered"] is False
        assert not [c for c, r in node1.items() if not r["agree"]]
        node2 = by_case(explain_all(lab, "node2"))
        # Its ingress side alone: web takes db on neither port, whatever db's egress says.
        assert node2[("demo/db", "demo/web", 80)]["expected"] is False
        assert not [c for c, r in node2.items() if not r["agree"]]
    finally:
        lab.delete(DB_EGRESS_DENY)
