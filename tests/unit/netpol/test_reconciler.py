"""The policy reconciler against a recording switch: one bundle per change holding only the owners
that changed, retries after a failed bundle, status of realised and invalid policies."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import cast

import pytest

from controller.openflow import OpenFlowError
from controller.policies import LocalPod, PolicyReconciler, node_addresses
from controller.store import Store
from controller.switch import Switch
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
