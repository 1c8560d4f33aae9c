"""The work queue: de-duplication, one worker per key, backoff, delays, reconciler signals."""

from __future__ import annotations

import threading
import time

from controller.errors import Permanent, RetryLater
from controller.workqueue import WorkQueue, backoff_delay, process_one, start_workers


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_key_waits_once() -> None:
    q: WorkQueue[str] = WorkQueue("t")
    for key in ["a", "b", "a", "a", "c", "b"]:
        q.add(key)
    assert len(q) == 3
    assert [q.get(0), q.get(0), q.get(0)] == ["a", "b", "c"]
    assert q.get(0) is None


def test_key_added_while_processing_is_requeued_on_done_not_before() -> None:
    q: WorkQueue[str] = WorkQueue("t")
    q.add("a")
    assert q.get(0) == "a"
    q.add("a")
    assert q.get(0) is None  # a second worker must not get "a" while the first holds it
    q.done("a")
    assert q.get(0) == "a"
    q.done("a")
    assert q.get(0) is None


def test_backoff_delay_doubles_and_caps() -> None:
    assert [backoff_delay(n, 0.5, 5.0) for n in range(6)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    assert backoff_delay(10_000, 0.5, 5.0) == 5.0


def test_rate_limited_adds_back_off_per_key_until_forgotten() -> None:
    clock = FakeClock()
    q: WorkQueue[str] = WorkQueue("t", base_delay=1.0, max_delay=8.0, clock=clock)
    assert [q.add_rate_limited("a") for _ in range(5)] == [1.0, 2.0, 4.0, 8.0, 8.0]
    assert q.failures("a") == 5
    assert q.add_rate_limited("b") == 1.0
    q.forget("a")
    assert q.failures("a") == 0
    assert q.add_rate_limited("a") == 1.0


def test_add_after_holds_the_key_until_due() -> None:
    clock = FakeClock()
    q: WorkQueue[str] = WorkQueue("t", clock=clock)
    q.add_after("late", 10)
    q.add_after("soon", 1)
    assert q.get(0) is None
    clock.now += 1
    assert q.get(0) == "soon"
    clock.now += 9
    assert q.get(0) == "late"


def test_blocking_get_wakes_for_delayed_key() -> None:
    q: WorkQueue[str] = WorkQueue("t")
    q.add_after("a", 0.05)
    start = time.monotonic()
    assert q.get(timeout=5) == "a"
    assert 0.04 <= time.monotonic() - start < 2


def test_shutdown_releases_blocked_getters() -> None:
    q: WorkQueue[str] = WorkQueue("t")
    got: list[str | None] = []
    t = threading.Thread(target=lambda: got.append(q.get()))
    t.start()
    time.sleep(0.05)
    q.shut_down()
    t.join(5)
    assert got == [None]
    q.add("x")
    assert q.get(0) is None


def test_process_one_acts_on_signals() -> None:
    clock = FakeClock()
    q: WorkQueue[str] = WorkQueue("t", base_delay=1.0, clock=clock)
    outcomes = {
        "ok": None,
        "later": RetryLater(30),
        "backoff": RetryLater(),
        "never": Permanent("bad object"),
        "bug": ValueError("oops"),
    }
    seen: list[str] = []

    def reconcile(key: str) -> None:
        seen.append(key)
        outcome = outcomes[key]
        if outcome is not None:
            raise outcome

    for key in outcomes:
        q.add(key)
    for _ in outcomes:
        assert process_one(q, reconcile, timeout=0)
    assert seen == list(outcomes)
    assert q.failures("ok") == 0 and q.failures("never") == 0
    assert q.failures("backoff") == 1 and q.failures("bug") == 1
    assert q.failures("later") == 0  # an explicit delay is the reconciler's call, not a failure
    clock.now += 1
    assert sorted([q.get(0), q.get(0)]) == ["backoff", "bug"]  # type: ignore[type-var]
    assert q.get(0) is None
    clock.now += 29
    assert q.get(0) == "later"


def test_workers_never_run_one_key_concurrently() -> None:
    q: WorkQueue[int] = WorkQueue("t")
    running: set[int] = set()
    overlaps: list[int] = []
    counts: dict[int, int] = {}
    lock = threading.Lock()

    def reconcile(key: int) -> None:
        with lock:
            if key in running:
                overlaps.append(key)
            running.add(key)
            counts[key] = counts.get(key, 0) + 1
        time.sleep(0.001)
        with lock:
            running.discard(key)

    threads = start_workers(q, reconcile, count=4)
    for _ in range(50):
        for key in range(5):
            q.add(key)
        time.sleep(0.001)
    deadline = time.monotonic() + 5
    while (len(q) or running) and time.monotonic() < deadline:
        time.sleep(0.01)
    q.shut_down()
    for t in threads:
        t.join(5)
    assert overlaps == []
    assert set(counts) == set(range(5))
