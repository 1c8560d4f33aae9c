"""Leaks: many ADD/DEL cycles through the executable, a share of the ADDs failing part-way by
injection (after IPAM, at the OVS port, at the container end, at the flows), each followed by
the DEL a runtime sends: nothing may remain (ADD-05, DEL-06)."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest

from cni import netns
from tests.cni.conftest import FlowFault, Node

pytestmark = pytest.mark.ovs

CYCLES = 200


class Injected(Exception):
    pass


def test_ADD_05_DEL_06_cycles_with_failures_leave_nothing(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_configure = netns.configure_container
    real_ipam_add = node.ipam.add
    fault = {"kind": ""}

    def configure(*args: Any, **kwargs: Any) -> None:
        real_configure(*args, **kwargs)  # the addresses are on: fail after them
        if fault["kind"] == "container":
            raise Injected("container end")

    def ipam_add(req: Any) -> Any:
        result = real_ipam_add(req)  # the address is reserved: fail after it
        if fault["kind"] == "ipam":
            raise Injected("after IPAM")
        return result

    def drop_veth(name: str) -> None:
        if fault["kind"] == "ofport":
            node.in_node("ip", "link", "del", name)

    monkeypatch.setattr(netns, "configure_container", configure)
    monkeypatch.setattr(node.ipam, "add", ipam_add)
    node.ports.before_add = drop_veth
    spaces = [node.make_netns() for _ in range(4)]
    outcomes: Counter[str] = Counter()
    kinds = ["", "flows", "ofport", "container", "ipam"]
    for i in range(CYCLES):
        fault["kind"] = kinds[i % len(kinds)]
        node.flows.fail_install = FlowFault("injected") if fault["kind"] == "flows" else None
        cid, ns = node.next_id("c"), spaces[i % len(spaces)]
        answer = node.call(node.env("ADD", cid, ns), node.conf())
        if fault["kind"]:
            assert answer.exit_code == 1, (fault, answer)
            assert json.loads(answer.stdout)["code"] != 0
        else:
            assert answer.exit_code == 0, answer
        outcomes[fault["kind"] or "ok"] += 1
        assert node.delete(cid, ns).exit_code == 0
    assert outcomes == {k or "ok": CYCLES // len(kinds) for k in kinds}
    assert node.leftovers() == Node.NOTHING_LEFT
    for ns in spaces:
        links = netns.read_container_link(ns, "eth0")
        assert links is None
