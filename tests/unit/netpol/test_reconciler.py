"""The policy reconciler against a recording switch: one bundle per change holding only the owners
that changed, retries after a failed bundle, status of realised and invalid policies, and one bad
object (or owner) set aside while every other change takes effect."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from typing import Any, cast

import pytest

from controller.openflow import OpenFlowError
from controller.policies import LocalPod, PolicyReconciler, node_addresses
from controller.store import KubeObject, Store
from controller.switch import Switch
from flows import policy as flows_policy
from flows.diff import FlowDiff
from flows.flow import Flow
from tests.unit.netpol.helpers import labels, namespace, pod, policy


class RecordingSwitch:
    """replace_many as the real switch sees it: one call is one bundle; can be made to fail."""

    def __init__(self) -> None:
        self.bundles: list[dict[str, list[Flow]]] = []
        self.installed: dict[str, list[Flow]] = {}
        self.failures = 0
        self.lock = threading.Lock()

    def replace_many(self, changes: dict[str, Iterable[Flow]]) -> FlowDiff:
        with self.lock:
            if self.failures:
                self.failures -= 1
                raise OpenFlowError("bundle refused")
            bundle = {owner: list(flows) for owner, flows in changes.items()}
            self.bundles.append(bundle)
            diff = FlowDiff()
            for owner, flows in bundle.items():
                old = self.installed.pop(owner, [])
                diff.adds += [f for f in flows if f not in old]
                diff.deletes += [f for f in old if f not in flows]
                if flows:
                    self.installed[owner] = flows
            return diff


LOCAL = [LocalPod("x", "a", 3, "10.0.0.1"), LocalPod("x", "b", 4, "10.0.0.2")]


@pytest.fixture
def world():
    store = Store()
    store.upsert("Namespace", namespace("x"))
    store.upsert("Pod", pod("x", "a", "10.0.0.1", app="a"))
    store.upsert("Pod", pod("x", "b", "10.0.0.2", app="b"))
    store.upsert("Pod", pod("x", "c", "10.0.9.3", node="node-b", app="c"))
    store.upsert("Node", {"metadata": {"name": "node-a"}, "spec": {"podCIDR": "10.0.0.0/24"}})
    switch = RecordingSwitch()
    local = list(LOCAL)
    reconciler = PolicyReconciler(
        store, cast(Switch, switch), 1, "node-a", lambda: list(local), retry_base=0.01
    )
    yield store, switch, reconciler, local
    reconciler.stop()


def test_start_installs_everything_in_one_bundle(world):
    store, switch, reconciler, _ = world
    store.upsert("NetworkPolicy", policy("x", "p", podSelector=labels(app="b"), ingress=[{}]))
    reconciler.start()
    assert len(switch.bundles) == 1
    assert "policy/node" in switch.bundles[0] and "policy/ofport/4" in switch.bundles[0]


def test_a_change_sends_one_bundle_of_the_owners_it_touches(world):
    store, switch, reconciler, _ = world
    allow_c = {"from": [{"podSelector": labels(app="c")}], "ports": [{"port": 80}]}
    store.upsert("NetworkPolicy", policy("x", "p", podSelector=labels(app="b"), ingress=[allow_c]))
    reconciler.start()
    store.upsert("Pod", pod("x", "d", "10.0.9.4", node="node-b", app="c"))
    assert reconciler.wait_idle(5)
    assert len(switch.bundles) == 2
    assert set(switch.bundles[1]) == {"policy/peer/10.0.9.4"}
    store.upsert("Pod", pod("x", "d", "10.0.9.4", node="node-b", app="c", extra="1"))
    assert reconciler.wait_idle(5)
    assert len(switch.bundles) == 2, "a label no selector reads changes nothing"


def test_a_failed_bundle_is_retried_until_committed(world):
    store, switch, reconciler, _ = world
    reconciler.start()
    switch.failures = 2
    store.upsert("NetworkPolicy", policy("x", "deny", podSelector=labels(app="a")))
    assert reconciler.wait_idle(5)
    assert switch.failures == 0
    assert "policy/ofport/3" in switch.installed
    (status,) = reconciler.status()
    assert status.realised and status.local_pods == ("x/a",)


def test_status_reports_invalid_policies_and_keeps_the_others(world):
    store, _switch, reconciler, _ = world
    reconciler.start()
    store.upsert("NetworkPolicy", policy("x", "ok", podSelector=labels(app="a")))
    store.upsert(
        "NetworkPolicy",
        policy(
            "x",
            "bad",
            ingress=[{"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["11.0.0.0/8"]}}]}],
        ),
    )
    assert reconciler.wait_idle(5)
    status = {s.name: s for s in reconciler.status()}
    assert status["ok"].realised and status["ok"].in_force
    assert not status["bad"].realised and not status["bad"].in_force
    assert "spec.ingress[0].from[0].ipBlock.except[0]" in (status["bad"].error or "")


def test_local_pods_are_read_again_when_one_comes_or_goes(world):
    store, switch, reconciler, local = world
    store.upsert("NetworkPolicy", policy("x", "deny"))
    reconciler.start()
    assert "policy/ofport/4" in switch.installed
    local.remove(LOCAL[1])
    reconciler.local_pod_changed(None, False)
    assert reconciler.wait_idle(5)
    assert "policy/ofport/4" not in switch.installed
    (status,) = reconciler.status()
    assert status.local_pods == ("x/a",)


def test_other_nodes_are_not_our_business(world):
    store, switch, reconciler, _ = world
    reconciler.start()
    store.upsert("Node", {"metadata": {"name": "node-b"}, "spec": {"podCIDR": "10.0.9.0/24"}})
    assert reconciler.wait_idle(5)
    assert len(switch.bundles) == 1


def test_node_addresses_are_the_gateway_and_the_node_ips():
    node = {
        "spec": {"podCIDRs": ["fd00::/64", "10.244.3.0/24"]},
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": "192.168.1.5"},
                {"type": "InternalIP", "address": "fd00::5"},
                {"type": "Hostname", "address": "node-a"},
            ]
        },
    }
    assert node_addresses(node) == ("10.244.3.1", ["192.168.1.5"])
    assert node_addresses(None) == (None, [])


# --- one bad object must not stop the others ----------------------------------------------------


def _bad_labels_pod(name: str) -> dict[str, Any]:
    # Labels that are no mapping: the manifests source refuses them since the bad-manifests
    # scenario, but any other way into the store made the whole batch fail every 5 s.
    bad = pod("x", name, "10.0.9.7", node="node-b")
    bad["metadata"]["labels"] = ["app", "c"]
    return bad


def test_a_key_that_raises_is_set_aside_and_the_others_take_effect(world, caplog):
    store, switch, reconciler, _ = world
    caplog.set_level(logging.INFO, "controller.policies")
    store.upsert("Pod", _bad_labels_pod("bad"))
    garbage = {"metadata": {"name": "node-a"}, "spec": {"podCIDR": "garbage"}}
    store.upsert("Node", garbage)
    store.upsert("NetworkPolicy", policy("x", "deny-a", podSelector=labels(app="a")))
    reconciler.start()  # one batch holding the bad pod, the bad node and the good policy
    assert "policy/ofport/3" in switch.installed, "the good policy took effect"
    assert set(reconciler.set_aside()) == {"Pod x/bad", "Node node-a"}
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert any("Pod x/bad" in m and "AttributeError" in m for m in skipped), skipped
    assert any("Node node-a" in m and "garbage" in m for m in skipped), skipped

    # A later batch: another bad key next to a good change.
    store.upsert("Pod", _bad_labels_pod("worse"))
    store.upsert("NetworkPolicy", policy("x", "deny-b", podSelector=labels(app="b")))
    assert reconciler.wait_idle(5)
    assert "policy/ofport/4" in switch.installed
    assert "Pod x/worse" in reconciler.set_aside()
    assert {s.name: s.realised for s in reconciler.status()} == {"deny-a": True, "deny-b": True}

    # Fixed objects are taken in at once (their events), and the node's gateway lands.
    store.upsert("Pod", pod("x", "bad", "10.0.9.7", node="node-b", app="c"))
    store.delete("Pod", "x", "worse")
    store.upsert("Node", {"metadata": {"name": "node-a"}, "spec": {"podCIDR": "10.0.0.0/24"}})
    assert reconciler.wait_idle(5)
    assert reconciler.set_aside() == {}
    assert reconciler.model.pod(("x", "bad")) is not None
    assert "taken in again" in caplog.text


class FlakyStore(Store):
    """A store whose `get` of one object raises its first `failures` times (a bug in reading
    it, say): nothing changes in the store when it recovers, so only the retry can notice."""

    def __init__(self, key: tuple[str, str, str], failures: int) -> None:
        super().__init__()
        self.key, self.failures = key, failures

    def get(self, kind: str, namespace: str, name: str) -> KubeObject | None:
        if (kind, namespace, name) == self.key and self.failures:
            self.failures -= 1
            raise RuntimeError(f"cannot read {name}")
        return super().get(kind, namespace, name)


def test_a_set_aside_key_is_tried_again_alone_with_backoff(caplog):
    store = FlakyStore(("NetworkPolicy", "x", "deny"), failures=2)
    store.upsert("Namespace", namespace("x"))
    store.upsert("Pod", pod("x", "a", "10.0.0.1", app="a"))
    store.upsert("NetworkPolicy", policy("x", "deny", podSelector=labels(app="a")))
    switch = RecordingSwitch()
    reconciler = PolicyReconciler(
        store,
        cast(Switch, switch),
        1,
        "node-a",
        lambda: list(LOCAL),
        poison_retry=0.05,
    )
    try:
        reconciler.start()
        assert "policy/ofport/3" not in switch.installed
        assert reconciler.set_aside() == {"NetworkPolicy x/deny": "RuntimeError: cannot read deny"}
        deadline = time.monotonic() + 5
        while "policy/ofport/3" not in switch.installed and time.monotonic() < deadline:
            time.sleep(0.01)
        assert "policy/ofport/3" in switch.installed, "retried without any event"
        assert reconciler.set_aside() == {}
        assert store.failures == 0
        messages = [r.getMessage() for r in caplog.records]
        assert sum("skipped NetworkPolicy x/deny" in m for m in messages) == 1
        assert sum("still skips NetworkPolicy x/deny" in m for m in messages) == 1
    finally:
        reconciler.stop()


def test_an_owner_that_cannot_be_built_keeps_its_flows_and_the_others_commit(
    world, monkeypatch, caplog
):
    store, switch, reconciler, _ = world
    monkeypatch.setattr(flows_policy, "MAX_CONJUNCTIONS_PER_FLOW", 1)
    from_c = [{"from": [{"podSelector": labels(app="c")}]}]
    store.upsert("NetworkPolicy", policy("x", "p1", podSelector=labels(app="b"), ingress=from_c))
    reconciler.start()
    before = switch.installed["policy/peer/10.0.9.3"]
    # A second rule on the same peer clause: more conjunctions than one flow may hold (here 1).
    store.upsert("NetworkPolicy", policy("x", "p2", podSelector=labels(app="a"), ingress=from_c))
    assert reconciler.wait_idle(5)
    assert "policy/ofport/3" in switch.installed, "p2's other owners are committed"
    assert switch.installed["policy/peer/10.0.9.3"] == before
    assert "policy flows of policy/peer/10.0.9.3 not built" in caplog.text
    assert {s.name: s.realised for s in reconciler.status()} == {"p1": True, "p2": False}
    store.delete("NetworkPolicy", "x", "p1")
    assert reconciler.wait_idle(5)
    assert switch.installed["policy/peer/10.0.9.3"] != before
    assert {s.name: s.realised for s in reconciler.status()} == {"p2": True}


# --- pods with malformed addresses ----------------------------------------------------------------


def test_a_pod_with_a_malformed_address_is_warned_about_once(world, caplog):
    store, _switch, reconciler, _ = world
    reconciler.start()
    bad = pod("x", "bad-ip", "not-an-ip", node="node-b", app="c")
    bad["status"]["podIPs"] = [{"ip": "999.1.1.1"}]
    store.upsert("Pod", bad)
    assert reconciler.wait_idle(5)
    bad["metadata"]["labels"]["tier"] = "1"  # changed, same bad address: no second warning
    store.upsert("Pod", bad)
    assert reconciler.wait_idle(5)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1, warnings
    assert "x/bad-ip" in warnings[0] and "'not-an-ip'" in warnings[0] and "999.1.1.1" in warnings[0]
    assert "neither selected nor matched" in warnings[0]
    info = reconciler.model.pod(("x", "bad-ip"))
    assert info is not None and info.ip is None
    store.upsert("Pod", pod("x", "bad-ip", "10.0.9.9", node="node-b", app="c"))
    assert reconciler.wait_idle(5)
    assert len([r for r in caplog.records if r.levelname == "WARNING"]) == 1
    info = reconciler.model.pod(("x", "bad-ip"))
    assert info is not None and info.ip == "10.0.9.9"
