"""Cookie layout: round | category | reserved | object id, and the filters built on it."""

from hypothesis import given
from hypothesis import strategies as st

from flows.cookie import (
    Category,
    Cookie,
    category_filter,
    next_round,
    object_filter,
    round_filter,
)


@given(
    st.integers(0, 0xFFFF),
    st.sampled_from(list(Category)),
    st.integers(0, 0xFFFFFFFF),
)
def test_cookie_round_trips(round_, category, object_id):
    cookie = Cookie(round_, category, object_id)
    assert Cookie.decode(cookie.value) == cookie


def test_round_filter_selects_only_that_round():
    cookie, mask = round_filter(7)
    assert Cookie(7, Category.POD, 5).value & mask == cookie
    assert Cookie(8, Category.POD, 5).value & mask != cookie


def test_object_filter_selects_one_owner():
    cookie, mask = object_filter(3, Category.POD, 42)
    assert Cookie(3, Category.POD, 42).value & mask == cookie
    assert Cookie(3, Category.POD, 43).value & mask != cookie
    assert Cookie(3, Category.NODE, 42).value & mask != cookie


def test_category_filter_ignores_round_and_object():
    cookie, mask = category_filter(Category.POLICY)
    assert Cookie(9, Category.POLICY, 1).value & mask == cookie
    assert Cookie(9, Category.POD, 1).value & mask != cookie


def test_rounds_wrap_and_skip_zero():
    assert next_round(None) == 1
    assert next_round(41) == 42
    assert next_round(0xFFFF) == 1
