"""ovs-vswitchd's own routes (controller.vswitchd, the agent's `ovs_routes`) on a real
ovs-vswitchd: added, replaced when added again, forgotten by a restart and added again, and a
refusal reported with ovs-vswitchd's reason."""

from __future__ import annotations

import subprocess
from collections.abc import Callable

import pytest

from controller.vswitchd import VswitchdError, add_routes, parse_routes
from lab.ovs_sandbox import OvsSandbox

BRIDGE = "brroute0"


def user_routes(sandbox: OvsSandbox) -> list[str]:
    return [
        line for line in sandbox.appctl("ovs/route/show").splitlines() if line.startswith("User:")
    ]


def with_address(sandbox: OvsSandbox) -> None:
    sandbox.vsctl("add-br", BRIDGE, "--", "set", "bridge", BRIDGE, "datapath_type=netdev")
    assert sandbox.netns is not None
    ip = ["ip", "-n", sandbox.netns]
    subprocess.run([*ip, "addr", "add", "10.77.0.1/24", "dev", BRIDGE, "noprefixroute"], check=True)
    subprocess.run([*ip, "link", "set", BRIDGE, "up"], check=True)


def test_routes_are_added_and_added_again_after_a_restart(
    make_sandbox: Callable[..., OvsSandbox],
) -> None:
    sandbox = make_sandbox()
    with_address(sandbox)
    routes = parse_routes(f"10.77.0.0/24 {BRIDGE}, 10.78.0.0/16 {BRIDGE} 10.77.0.254")
    add_routes(sandbox.rundir, routes)
    add_routes(sandbox.rundir, routes)  # again: replaced, not doubled, no error
    want = [
        f"User: 10.77.0.0/24 dev {BRIDGE} SRC 10.77.0.1",
        f"User: 10.78.0.0/16 dev {BRIDGE} GW 10.77.0.254 SRC 10.77.0.1",
    ]
    assert sorted(user_routes(sandbox)) == want
    sandbox.stop_vswitchd()
    sandbox.start_vswitchd()
    assert user_routes(sandbox) == []  # what the agent's reconnection puts back
    add_routes(sandbox.rundir, routes)
    assert sorted(user_routes(sandbox)) == want


def test_a_route_ovs_vswitchd_refuses_is_an_error_with_its_reason(
    make_sandbox: Callable[..., OvsSandbox],
) -> None:
    sandbox = make_sandbox()
    sandbox.vsctl("add-br", BRIDGE, "--", "set", "bridge", BRIDGE, "datapath_type=netdev")
    # No address on the bridge: no source address for the route.
    with pytest.raises(VswitchdError, match=r"ovs/route/add 10\.77\.0\.0/24 brroute0: .*route"):
        add_routes(sandbox.rundir, parse_routes(f"10.77.0.0/24 {BRIDGE}"))
