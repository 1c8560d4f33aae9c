"""DEL takes the attachment out of the interface store before it tells the flow installer:
whoever that installer notifies (the policy reconciler reads the store) must already see the
pod gone, or its policy flows outlive it. A DEL that fails part-way puts it back."""

from __future__ import annotations

from typing import Any

import pytest

from cni.protocol import Attachment
from tests.cni.conftest import Node

pytestmark = pytest.mark.ovs


def test_the_store_no_longer_holds_the_pod_when_its_flows_go(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    cid, netns = node.next_id("c"), node.make_netns()
    node.add(cid, netns)
    seen: list[Any] = []
    real_remove = node.flows.remove_pod

    def remove_pod(iface: Any) -> None:
        seen.append(node.podnet.store.get(iface.attachment))
        real_remove(iface)

    monkeypatch.setattr(node.flows, "remove_pod", remove_pod)
    assert node.delete(cid, netns).exit_code == 0
    assert seen == [None]
    assert node.leftovers() == Node.NOTHING_LEFT


def test_a_failed_teardown_keeps_the_pod_for_the_next_del(node: Node) -> None:
    cid, netns = node.next_id("c"), node.make_netns()
    node.add(cid, netns)
    node.flows.fail_remove.add(cid)
    assert node.delete(cid, netns).exit_code == 1
    assert node.podnet.store.get(Attachment(cid, "eth0")) is not None
    node.flows.fail_remove.clear()
    assert node.delete(cid, netns).exit_code == 0
    assert node.leftovers() == Node.NOTHING_LEFT
