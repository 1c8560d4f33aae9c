"""controller.vswitchd without OVS: the `ovs_routes` syntax and finding ovs-vswitchd's control
socket (tests/ovs/test_vswitchd_routes.py adds routes to a real ovs-vswitchd)."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.vswitchd import OvsRoute, VswitchdError, control_socket, parse_routes


def test_routes_are_parsed_with_an_optional_gateway() -> None:
    text = " 172.30.0.0/24 br-phy , 10.1.0.7/16 br-phy 172.30.0.1,"
    assert parse_routes(text) == [
        OvsRoute("172.30.0.0/24", "br-phy"),
        OvsRoute("10.1.0.0/16", "br-phy", "172.30.0.1"),  # the prefix, as OVS keeps it
    ]
    assert parse_routes("") == []
    assert OvsRoute("10.1.0.0/16", "br-phy", "172.30.0.1").args() == [
        "10.1.0.0/16",
        "br-phy",
        "172.30.0.1",
    ]


@pytest.mark.parametrize(
    "entry", ["172.30.0.0/24", "x br-phy", "172.30.0.0/24 br-phy nope", "1.2.3.0/24 a b c"]
)
def test_a_bad_entry_is_named(entry: str) -> None:
    with pytest.raises(ValueError, match=entry.split()[0]):
        parse_routes(f"10.0.0.0/8 br-phy, {entry}")


def test_the_control_socket_by_name_or_by_pidfile(tmp_path: Path) -> None:
    with pytest.raises(VswitchdError, match="no ovs-vswitchd control socket"):
        control_socket(tmp_path)
    (tmp_path / "ovs-vswitchd.pid").write_text("4242\n")
    assert control_socket(tmp_path) == tmp_path / "ovs-vswitchd.4242.ctl"
    (tmp_path / "ovs-vswitchd.ctl").touch()
    assert control_socket(tmp_path) == tmp_path / "ovs-vswitchd.ctl"
