"""The pool of OpenFlow port numbers the agent asks OVS for: round-robin, never a number in use,
pending or held by a port that is no pod's; a restarted agent starts after its last numbers."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from cni.ofports import OfportPool
from cni.protocol import CniError, ErrorCode


def test_round_robin_does_not_reuse_a_freed_number_at_once() -> None:
    pool = OfportPool(1, 5)
    first = pool.take(list)
    pool.done(first)  # the pod went away again
    assert first == 1 and pool.take(list) == 2


def test_skips_numbers_in_use_pending_and_foreign() -> None:
    pool = OfportPool(1, 6)
    pool.learn(foreign=[2])
    assert pool.take(list) == 1  # pending: not done yet
    assert pool.take(lambda: [3, 4]) == 5
    pool.done(5)
    assert pool.take(lambda: [3, 4, 5]) == 6
    pool.done(6)
    with pytest.raises(CniError):  # wrapped: 1 pending, 2 foreign, 3-6 in use
        pool.take(lambda: [3, 4, 5, 6])
    pool.done(1)
    assert pool.take(lambda: [3, 4, 5, 6]) == 1


def test_a_full_range_is_an_ovs_failure() -> None:
    pool = OfportPool(1, 3)
    for _ in range(3):
        pool.take(list)
    with pytest.raises(CniError) as info:
        pool.take(list)
    assert info.value.code == ErrorCode.OVS_FAILURE


def test_a_restarted_agent_starts_after_the_highest_number_seen() -> None:
    pool = OfportPool()
    pool.learn(foreign=[32768, 32769], seen=[32768, 32769, 7, 40])  # tunnel, gateway, pods
    assert pool.take(lambda: [7, 40]) == 41


def test_concurrent_takes_never_share_a_number() -> None:
    pool = OfportPool(1, 200)
    with ThreadPoolExecutor(max_workers=16) as threads:
        got = list(threads.map(lambda _: pool.take(list), range(200)))
    assert sorted(got) == list(range(1, 201))


def test_learning_foreign_numbers_later_does_not_move_the_cursor_back() -> None:
    pool = OfportPool(1, 10)
    for _ in range(6):
        pool.done(pool.take(list))  # 1..6 handed out and freed again
    pool.learn(foreign=[2])  # a surprise: a port holds 2
    assert pool.take(list) == 7  # still round-robin, not back to 3
