"""The pod reconciler's datapath half: a pod attachment's flows, installed through the switch.

The CNI server calls it (through the `cni.podnet.PodFlows` protocol) after the pod's port has an
ofport, and before the port is deleted. The pod's cookie carries its ofport as object id, so a
per-pod dump or counter query is one cookie/mask.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from cni.podnet import PodInterface
from controller.switch import Switch
from flows.cookie import Category, Cookie
from flows.pod import LocalNode, PodPort, pod_flows

log = logging.getLogger(__name__)


class SwitchPodFlows:
    """Installs and removes pod flows; notifies listeners (the policy reconciler) of changes."""

    def __init__(self, switch: Switch, node: LocalNode, round_: int) -> None:
        self.switch = switch
        self.node = node
        self.round = round_
        self.listeners: list[Callable[[PodInterface, bool], None]] = []

    def install_pod(self, iface: PodInterface) -> None:
        flows = pod_flows(_port(iface), self.node, self._cookie(iface))
        diff = self.switch.replace_flows(iface.owner, flows)
        log.info(
            "pod flows installed owner=%s ofport=%d adds=%d mods=%d dels=%d",
            iface.owner,
            iface.ofport,
            len(diff.adds),
            len(diff.modifies),
            len(diff.deletes),
        )
        self._notify(iface, True)

    def remove_pod(self, iface: PodInterface) -> None:
        self.switch.delete_flows(iface.owner)
        self._notify(iface, False)

    def pod_flows_present(self, iface: PodInterface) -> bool:
        """True when the store holds this pod's flows and OVS still has each of them."""
        expected = len(self.switch.installed(iface.owner))
        if expected == 0:
            return False
        cookie = self._cookie(iface)
        stats = self.switch.flow_stats(cookie, 0xFFFFFFFFFFFFFFFF)
        return len(stats) == expected

    def _cookie(self, iface: PodInterface) -> int:
        return Cookie(self.round, Category.POD, iface.ofport).value

    def _notify(self, iface: PodInterface, present: bool) -> None:
        for listener in self.listeners:
            listener(iface, present)


def _port(iface: PodInterface) -> PodPort:
    if iface.ipv4 is None or iface.ofport <= 0:
        raise ValueError(f"{iface.owner}: no IPv4 address or ofport to build flows from")
    return PodPort(ofport=iface.ofport, ip=str(iface.ipv4), mac=iface.mac)
