"""The transcribed upstream NetworkPolicy suite in a real lab: one lab (2 nodes, upstream's 9
pods) for the module; per case, each step's world is written, the agents are waited for until
their flows are exactly what the model asks for, and every pair is probed against the expected
table. A mismatch fails with upstream's three grids (expected, observed, comparison).

SCTP probes skip with the lab's reason where the kernel has no SCTP; the SCTP cases' policies
are still applied and must still be realised by the agents.

Last, a sample of the property tests' random worlds (random labels on the same 9 pods, random
policies) goes through the same lab, judged by the model's verdict instead of a table."""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.netpol_model import World, verdict
from tests.netpol_conformance import cases as c
from tests.netpol_conformance.lab_runner import ConformanceLab
from tests.unit.netpol import strategies

pytestmark = pytest.mark.lab

CASES = c.all_cases()


@pytest.fixture(scope="module")
def lab() -> Iterator[ConformanceLab]:
    lab = ConformanceLab(f"np{uuid.uuid4().hex[:6]}")
    try:
        lab.up()
        yield lab
    finally:
        lab.down()


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_upstream_case_in_the_lab(lab: ConformanceLab, case: c.Case) -> None:
    start = time.monotonic()
    results = lab.run(case)
    skipped = {r.skipped for r in results if r.skipped}
    print(f"{case.id}: {len(results)} checks in {time.monotonic() - start:.1f}s")
    if skipped and all(r.skipped for r in results):
        pytest.skip("; ".join(sorted(skipped)))


# --- random policies over random labels, judged by the model, through real probes -------------

PROBED = (c.Check("TCP", 80, ()), c.Check("TCP", 81, ()), c.Check("UDP", 80, ()))


@st.composite
def random_states(draw: st.DrawFn) -> c.State:
    """The lab's 9 pods and 3 namespaces with random labels (the property tests' vocabulary,
    beside each pod's own `pod` label) and 1 to 3 random policies."""
    pod_labels = {
        ref: {"pod": ref.split("/")[1], **draw(strategies._labels(strategies.POD_LABELS))}
        for ref in c.PODS
    }
    ns_labels = {ns: draw(strategies._labels(strategies.NS_LABELS)) for ns in c.NAMESPACES}
    policies = {}
    for i in range(draw(st.integers(1, 3))):
        policy = draw(strategies.policies(list(c.NAMESPACES), i))
        policy.update(apiVersion="networking.k8s.io/v1", kind="NetworkPolicy")
        meta = policy["metadata"]
        policies[f"{meta['namespace']}/{meta['name']}"] = policy
    return c.State(policies, pod_labels, ns_labels)


def model_table(lab: ConformanceLab, state: c.State, check: c.Check) -> c.Table:
    namespaces, pods, policies = state.objects(lab.ips)
    world = World.of(policies, pods, namespaces)
    return {
        (src, dst): verdict(world, _key(src), _key(dst), check.protocol, check.port)
        for src in c.PODS
        for dst in c.PODS
    }


def _key(ref: str) -> tuple[str, str]:
    namespace, name = ref.split("/")
    return namespace, name


@settings(
    max_examples=10,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(state=random_states())
def test_random_policies_in_the_lab_match_the_model(lab: ConformanceLab, state: c.State) -> None:
    """A sample of the property tests' random worlds through real probes: what the agents
    install lets through exactly what the model's verdict says, on TCP 80 and 81 and UDP 80."""
    lab.converge(state)
    lab.wait_in_sync()
    # A policy change leaves established connections alone (docs/networkpolicy.md), and a UDP
    # probe may reuse a 5-tuple a previous world allowed: judge each world on new connections.
    for node in ("node1", "node2"):
        ctl = lab.layout.node_by_name(node).ovs_rundir / "ovs-vswitchd.ctl"
        subprocess.run(["ovs-appctl", "-t", str(ctl), "dpctl/flush-conntrack"], check=True)
    for check in PROBED:
        expected = model_table(lab, state, check)
        result = lab.verify(replace(check, expect=_as_expectations(expected)))
        assert not result.wrong, (
            f"{check.probe}: {len(result.wrong)} wrong\n{c.comparison(expected, result.observed)}"
        )


def _as_expectations(table: c.Table) -> tuple[tuple[str, str, bool], ...]:
    """The model's table as a check's expectations (one line per denied pair)."""
    return tuple((src, dst, False) for (src, dst), ok in table.items() if not ok)


# --- intent against datapath on conformance worlds (issue 8's `plumbctl explain --all`) --------

EXPLAINED = (
    "02-default-deny-all",
    "06-allow-only-from-other-namespace",
    "10-podselector-and-namespaceselector",
)


@pytest.mark.parametrize("case_id", EXPLAINED)
def test_explain_all_agrees_with_the_datapath_on_conformance_worlds(
    lab: ConformanceLab, case_id: str
) -> None:
    import json
    import subprocess
    import sys

    case = next(case for case in CASES if case.id == case_id)
    lab.run(case)  # leaves the case's last world in force, realised on both nodes
    cmd = [
        sys.executable,
        "-m",
        "plumbctl",
        "explain",
        "--all",
        "--ports",
        "80,81",
        "--protocols",
        "TCP",
        "--lab",
        lab.name,
        "-o",
        "json",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    report = json.loads(done.stdout)
    assert report["mismatches"] == 0, [r for r in report["results"] if not r["agree"]]
    assert done.returncode == 0
    assert any(not r["model"]["allowed"] for r in report["results"]), "the case blocks something"
