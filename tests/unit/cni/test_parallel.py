"""Steps of a call run together on reused workers: results in step order, every step finished
before the first failure (in step order) is raised, no pool waiting on itself."""

from __future__ import annotations

import threading
import time

import pytest

from cni.parallel import Steps


def test_results_in_step_order_and_workers_reused() -> None:
    steps = Steps(max_workers=4)
    seen: set[int] = set()

    def helper(value: int) -> int:
        seen.add(threading.get_ident())
        time.sleep(0.01)
        return value

    for _ in range(5):
        assert steps.together(lambda: 0, lambda: helper(1), lambda: helper(2)) == [0, 1, 2]
    assert threading.get_ident() not in seen
    assert len(seen) <= 2  # two helpers per call, the same two threads every time
    steps.close()


def test_the_first_failure_is_raised_after_every_step_finished() -> None:
    steps = Steps()
    finished: list[str] = []

    def slow() -> None:
        time.sleep(0.1)
        finished.append("slow")

    def fails(name: str) -> None:
        finished.append(name)
        raise ValueError(name)

    with pytest.raises(ValueError, match="second"):
        steps.together(slow, lambda: fails("second"), lambda: fails("third"))
    assert sorted(finished) == ["second", "slow", "third"]


def test_steps_that_run_steps_do_not_wait_on_their_own_pool() -> None:
    steps = Steps(max_workers=1)

    def nested() -> list[int]:
        return steps.together(lambda: 1, lambda: 2)

    result = steps.together(lambda: 0, nested)
    assert result == [0, [1, 2]]
