"""Match canonicalisation: equal OVS matches are equal values."""

import pytest

from flows.fields import FROM_POD, TO_LOCAL
from flows.flow import match


def test_host_prefix_equals_plain_address():
    assert match(eth_type=0x0800, ipv4_src="10.0.0.5/32") == match(
        eth_type=0x0800, ipv4_src="10.0.0.5"
    )


def test_field_order_does_not_matter():
    assert match(in_port=3, eth_type=0x0800) == match(eth_type=0x0800, in_port=3)


def test_marks_of_one_register_merge():
    merged = match(FROM_POD, TO_LOCAL)
    assert merged.get("reg0") == (0x33, 0xFF)


def test_same_field_marked_twice_is_refused():
    with pytest.raises(ValueError, match="PKT_SOURCE matched twice"):
        match(FROM_POD, FROM_POD)


def test_value_with_bits_outside_mask_is_refused():
    with pytest.raises(ValueError, match="outside mask"):
        match(eth_type=0x0800, ipv4_src=("10.0.0.5", "255.255.255.0"))


def test_unknown_field_is_refused():
    with pytest.raises(ValueError, match="unknown match field"):
        match(nw_src="10.0.0.1")
