"""The fast encoder agrees byte for byte with os-ken's message classes."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from os_ken.ofproto import ofproto_v1_3_parser as parser

from flows import encode
from flows.encode import (
    ADD,
    DATAPATH,
    DELETE_STRICT,
    MODIFY_STRICT,
    bundle_add,
    flow_mod,
    osken_flow_mod,
    serialize,
)
from flows.fields import TO_LOCAL
from flows.flow import Conjunction, match
from flows.pipeline import table
from flows.skeleton import skeleton_flows
from tests.unit.flows.samples import sample_flows

ALL = skeleton_flows(1) + sample_flows()


@pytest.mark.parametrize("command", [ADD, MODIFY_STRICT, DELETE_STRICT])
@pytest.mark.parametrize("index", range(len(ALL)))
def test_fast_encoding_equals_osken(index, command):
    flow = ALL[index]
    assert flow_mod(flow, command, 77) == serialize(osken_flow_mod(flow, command), 77)


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 0xFFFFFFFE),
    st.integers(0, 0xFFFF),
    st.integers(1, 0xFFFFFFFF),
    st.integers(1, 8),
    st.integers(0, 32),
)
def test_clause_flows_encode_like_osken(address, port, conj_id, n_clauses, prefix):
    mask = (0xFFFFFFFF << (32 - prefix)) & 0xFFFFFFFF
    flow = table("IngressRule").flow(
        200,
        match(TO_LOCAL, eth_type=0x0800, ip_proto=6, ipv4_src=(address & mask, mask), tcp_dst=port),
        [Conjunction(conj_id, 1, n_clauses)],
        cookie=conj_id,
    )
    assert flow_mod(flow, ADD, 5) == serialize(osken_flow_mod(flow), 5)


def test_bundle_add_wraps_like_osken():
    flow = ALL[0]
    reference = parser.ONFBundleAddMsg(DATAPATH, 9, 3, osken_flow_mod(flow), [])
    assert bundle_add(flow_mod(flow, ADD, 11), 9, 11, 3) == serialize(reference, 11)


def test_encoding_is_cached_on_the_flow():
    flow = sample_flows()[0]
    first = flow_mod(flow, ADD, 1)
    assert flow.wire and flow_mod(flow, ADD, 1) == first


def test_the_instruction_cache_is_a_small_bound():
    # Each pod's own instruction lists (its MAC, its port) pass through it: with the former
    # bound (65,536) they made most of the agent's memory growth over pod churn.
    assert encode.instruction_bytes.cache_info().maxsize == encode.INSTRUCTION_CACHE <= 1024
