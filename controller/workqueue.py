"""A keyed, de-duplicating work queue with per-key exponential backoff, and its worker loop.

Semantics (those of client-go's workqueue, which reconcilers across the field are written for):
- A key waits in the queue at most once, however often it is added.
- A key is handed to one worker at a time; a key added while being processed is queued again
  when that worker calls `done`, so no change is missed and no key runs twice at once.
- `add_rate_limited` requeues after base * 2**failures seconds (capped); `forget` resets the
  count once the key has been reconciled.
- `add_after` delays an add, for reconcilers that know when to look again.

`run_worker` turns reconciler outcomes into queue actions: success forgets the key, `RetryLater`
requeues it (after its delay or with backoff), `Permanent` drops it, any other exception is
logged as a bug and retried with backoff.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from controller.errors import Permanent, RetryLater

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)


def backoff_delay(failures: int, base: float, cap: float) -> float:
    """base * 2**failures, at most cap: the wait before retry number `failures` + 1."""
    if failures >= 64:  # 2**64 * base is beyond any cap; avoid float overflow games.
        return cap
    return float(min(cap, base * (2**failures)))


class WorkQueue(Generic[K]):
    """Keys waiting for a reconciler. Thread-safe; `get` blocks."""

    def __init__(
        self,
        name: str = "",
        *,
        base_delay: float = 0.005,
        max_delay: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self._base = base_delay
        self._cap = max_delay
        self._clock = clock
        self._cond = threading.Condition()
        self._queue: deque[K] = deque()
        self._dirty: set[K] = set()  # queued, or re-added while processing
        self._processing: set[K] = set()
        self._failures: dict[K, int] = {}
        self._waiting: list[tuple[float, int, K]] = []  # heap of (due, seq, key)
        self._seq = itertools.count()
        self._shutting_down = False

    def __len__(self) -> int:
        """Keys ready to be handed out (not counting delayed or in-process ones)."""
        with self._cond:
            return len(self._queue)

    def add(self, key: K) -> None:
        """Queue `key` unless it is already waiting."""
        with self._cond:
            self._add_locked(key)

    def _add_locked(self, key: K) -> None:
        if self._shutting_down or key in self._dirty:
            return
        self._dirty.add(key)
        if key in self._processing:
            return  # `done` queues it again
        self._queue.append(key)
        self._cond.notify()

    def add_after(self, key: K, delay: float) -> None:
        """Queue `key` once `delay` seconds have passed."""
        if delay <= 0:
            self.add(key)
            return
        with self._cond:
            if self._shutting_down:
                return
            heapq.heappush(self._waiting, (self._clock() + delay, next(self._seq), key))
            # Wake a getter so that it sleeps until this due time at most.
            self._cond.notify()

    def add_rate_limited(self, key: K) -> float:
        """Queue `key` after its backoff delay, count one more failure; returns the delay."""
        with self._cond:
            failures = self._failures.get(key, 0)
            self._failures[key] = failures + 1
        delay = backoff_delay(failures, self._base, self._cap)
        self.add_after(key, delay)
        return delay

    def failures(self, key: K) -> int:
        """How many times `key` was requeued with backoff since it was last forgotten."""
        with self._cond:
            return self._failures.get(key, 0)

    def forget(self, key: K) -> None:
        """Reset the backoff of `key` (it was reconciled, or dropped for good)."""
        with self._cond:
            self._failures.pop(key, None)

    def get(self, timeout: float | None = None) -> K | None:
        """The next key to process, which the caller must hand back with `done`.

        Returns None on shutdown or when `timeout` seconds pass with nothing to do.
        """
        deadline = None if timeout is None else self._clock() + timeout
        with self._cond:
            while True:
                self._promote_due_locked()
                if self._queue:
                    key = self._queue.popleft()
                    self._dirty.discard(key)
                    self._processing.add(key)
                    return key
                if self._shutting_down:
                    return None
                now = self._clock()
                wait = None if deadline is None else deadline - now
                if wait is not None and wait <= 0:
                    return None
                if self._waiting:
                    until_due = max(0.0, self._waiting[0][0] - now)
                    wait = until_due if wait is None else min(wait, until_due)
                self._cond.wait(wait)

    def _promote_due_locked(self) -> None:
        now = self._clock()
        while self._waiting and self._waiting[0][0] <= now:
            _, _, key = heapq.heappop(self._waiting)
            self._add_locked(key)

    def done(self, key: K) -> None:
        """Hand `key` back; if it was added meanwhile, it is queued again."""
        with self._cond:
            self._processing.discard(key)
            if key in self._dirty and not self._shutting_down:
                self._queue.append(key)
                self._cond.notify()

    def shut_down(self) -> None:
        """Stop handing out keys; blocked `get` calls return None."""
        with self._cond:
            self._shutting_down = True
            self._cond.notify_all()

    @property
    def shutting_down(self) -> bool:
        with self._cond:
            return self._shutting_down


Reconcile = Callable[[K], None]


def process_one(queue: WorkQueue[K], reconcile: Reconcile[K], timeout: float | None = None) -> bool:
    """Take one key, reconcile it, act on the outcome. False when the queue has shut down."""
    key = queue.get(timeout)
    if key is None:
        return not queue.shutting_down
    try:
        reconcile(key)
    except RetryLater as signal:
        if signal.delay is None:
            delay = queue.add_rate_limited(key)
        else:
            delay = signal.delay
            queue.add_after(key, delay)
        log.debug(
            "retry later", extra={"queue": queue.name, "key": key, "delay": delay, "why": signal}
        )
    except Permanent as signal:
        queue.forget(key)
        log.warning("giving up on key", extra={"queue": queue.name, "key": key, "why": signal})
    except Exception:
        delay = queue.add_rate_limited(key)
        log.exception("reconciler failed", extra={"queue": queue.name, "key": key, "delay": delay})
    else:
        queue.forget(key)
    finally:
        queue.done(key)
    return True


def run_worker(queue: WorkQueue[K], reconcile: Reconcile[K]) -> None:
    """Process keys until the queue shuts down. Run it in as many threads as wanted."""
    while process_one(queue, reconcile):
        pass


def start_workers(
    queue: WorkQueue[K], reconcile: Reconcile[K], count: int = 1
) -> list[threading.Thread]:
    """Start `count` daemon threads running `run_worker`; join them after `queue.shut_down()`."""
    threads = [
        threading.Thread(
            target=run_worker, args=(queue, reconcile), name=f"{queue.name}-{i}", daemon=True
        )
        for i in range(count)
    ]
    for thread in threads:
        thread.start()
    return threads
