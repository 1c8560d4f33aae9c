"""Hypothesis strategies for random NetworkPolicy worlds (namespaces, pods on two nodes, policies
over a small label vocabulary), and the probes to judge them with. Shared by the pure property
tests and the OVS ones."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

from tests.unit.netpol.helpers import namespace, pod

NAMESPACES = ("x", "y", "z")
NODES = ("node-a", "node-b")
NODE_SUBNETS = {"node-a": "10.244.0", "node-b": "10.244.1"}
BLOCKS = (
    {"cidr": "10.244.0.0/24"},
    {"cidr": "10.244.0.0/16", "except": ["10.244.1.0/24"]},
    {"cidr": "10.244.0.8/29"},
    {"cidr": "0.0.0.0/0", "except": ["10.244.0.10/32"]},
    {"cidr": "0.0.0.0/0"},
    {"cidr": "192.168.0.0/16"},
)
EXTERNAL = ("192.168.5.5", "8.8.8.8")
PROBES = (
    ("TCP", 80),
    ("TCP", 81),
    ("TCP", 8080),
    ("UDP", 53),
    ("UDP", 80),
    ("SCTP", 80),
    ("ICMP", None),
)


@dataclass
class RandomWorld:
    namespaces: list[dict[str, Any]]
    pods: list[dict[str, Any]]
    policies: list[dict[str, Any]]

    def pod_keys(self) -> list[tuple[str, str]]:
        return [(p["metadata"]["namespace"], p["metadata"]["name"]) for p in self.pods]


def _labels(keys: dict[str, list[str]]) -> st.SearchStrategy[dict[str, str]]:
    return st.fixed_dictionaries({}, optional={k: st.sampled_from(v) for k, v in keys.items()})


POD_LABELS = {"app": ["a", "b"], "tier": ["web"]}
NS_LABELS = {"team": ["red", "blue"]}


def selectors(keys: dict[str, list[str]]) -> st.SearchStrategy[dict[str, Any]]:
    key = st.sampled_from(sorted(keys))
    expression = st.one_of(
        st.builds(
            lambda k, op, v: {"key": k, "operator": op, "values": v},
            key,
            st.sampled_from(["In", "NotIn"]),
            st.lists(st.sampled_from(["a", "b", "web", "red", "blue"]), min_size=1, max_size=2),
        ),
        st.builds(
            lambda k, op: {"key": k, "operator": op},
            key,
            st.sampled_from(["Exists", "DoesNotExist"]),
        ),
    )
    return st.one_of(
        st.just({}),
        st.builds(lambda m: {"matchLabels": m}, _labels(keys).filter(bool)),
        st.builds(lambda e: {"matchExpressions": e}, st.lists(expression, min_size=1, max_size=2)),
    )


PEERS = st.one_of(
    st.builds(lambda s: {"podSelector": s}, selectors(POD_LABELS)),
    st.builds(lambda s: {"namespaceSelector": s}, selectors(NS_LABELS)),
    st.builds(
        lambda p, n: {"podSelector": p, "namespaceSelector": n},
        selectors(POD_LABELS),
        selectors(NS_LABELS),
    ),
    st.builds(lambda b: {"ipBlock": b}, st.sampled_from(BLOCKS)),
)

PORTS = st.one_of(
    st.builds(lambda p: {"port": p}, st.sampled_from([80, 81])),
    st.builds(lambda p: {"protocol": "UDP", "port": p}, st.sampled_from([53, 80])),
    st.just({"port": 80, "endPort": 81}),
    st.just({"port": "http"}),
    st.just({"port": "dns", "protocol": "UDP"}),
    st.just({"protocol": "SCTP"}),
    st.just({"protocol": "UDP"}),
)


def rules(peers_field: str) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {},
        optional={
            peers_field: st.lists(PEERS, max_size=2),
            "ports": st.lists(PORTS, max_size=2),
        },
    )


@st.composite
def policies(draw: st.DrawFn, namespaces: list[str], index: int) -> dict[str, Any]:
    spec: dict[str, Any] = {"podSelector": draw(selectors(POD_LABELS))}
    types = draw(st.sampled_from([None, ["Ingress"], ["Egress"], ["Ingress", "Egress"]]))
    if types is not None:
        spec["policyTypes"] = types
    if draw(st.booleans()):
        spec["ingress"] = draw(st.lists(rules("from"), max_size=2))
    if draw(st.booleans()):
        spec["egress"] = draw(st.lists(rules("to"), max_size=2))
    ns = draw(st.sampled_from(namespaces))
    return {
        "metadata": {"namespace": ns, "name": f"p{index}", "uid": f"uid-{ns}-{index}"},
        "spec": spec,
    }


@st.composite
def pods(draw: st.DrawFn, namespaces: list[str], index: int) -> dict[str, Any]:
    node = draw(st.sampled_from(NODES))
    ports: dict[str, Any] = {}
    http = draw(st.sampled_from([None, 80, 81, 8080]))
    if http is not None:
        ports["http"] = http
    if draw(st.booleans()):
        ports["dns"] = (53, "UDP")
    return pod(
        draw(st.sampled_from(namespaces)),
        f"pod{index}",
        f"{NODE_SUBNETS[node]}.{10 + index}",
        ports,
        node=node,
        **draw(_labels(POD_LABELS)),
    )


@st.composite
def worlds(draw: st.DrawFn, max_pods: int = 5, max_policies: int = 3) -> RandomWorld:
    names = list(NAMESPACES[: draw(st.integers(1, len(NAMESPACES)))])
    spaces = [namespace(n, **draw(_labels(NS_LABELS))) for n in names]
    count = draw(st.integers(2, max_pods))
    pod_list = [draw(pods(names, i)) for i in range(count)]
    policy_list = [draw(policies(names, i)) for i in range(draw(st.integers(1, max_policies)))]
    return RandomWorld(spaces, pod_list, policy_list)
