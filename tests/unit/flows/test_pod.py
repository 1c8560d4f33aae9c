"""Pod and gateway flows against golden ovs-ofctl text."""

from flows.cookie import Category, Cookie
from flows.ofctl import render_flows
from flows.pod import LocalNode, PodPort, gateway_flows, pod_flows
from tests.unit.flows.goldens import check_golden

NODE = LocalNode(pod_cidr="10.10.1.0/24", gateway_ip="10.10.1.1", gateway_mac="0a:58:0a:0a:01:01")
POD = PodPort(ofport=3, ip="10.10.1.5", mac="0a:58:0a:0a:01:05")
PORT_NAMES = {3: "web-0-3f2a9c", 32769: "plumb-gw0"}


def pod_and_gateway_flows():
    return pod_flows(POD, NODE, Cookie(1, Category.POD, 3).value) + gateway_flows(
        NODE, Cookie(1, Category.NODE, 0).value
    )


def test_pod_and_gateway_flows_render_to_golden():
    check_golden("pod", render_flows(pod_and_gateway_flows(), PORT_NAMES))


def test_pod_flows_carry_the_pod_cookie():
    cookie = Cookie(4, Category.POD, POD.ofport).value
    assert {f.cookie for f in pod_flows(POD, NODE, cookie)} == {cookie}


def test_pod_flows_are_keyed_by_port_ip_and_mac():
    other = PodPort(ofport=4, ip="10.10.1.6", mac="0a:58:0a:0a:01:06")
    mine = {f.key for f in pod_flows(POD, NODE, 1)}
    theirs = {f.key for f in pod_flows(other, NODE, 1)}
    assert not mine & theirs
