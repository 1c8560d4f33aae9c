"""Independent steps of one CNI call run side by side on reusable worker threads.

Starting a thread costs a hand-off on the critical path (`Thread.start` waits until the new
thread runs), which a loaded node feels on every ADD; idle workers are woken instead. A
thread is born in the network namespace of the thread that starts it, so workers are kept
per caller namespace: a call from the node's namespace gets workers that live there.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

log = logging.getLogger("plumb.cni.parallel")

MAX_WORKERS = 64  # per namespace; a busy node runs tens of CNI calls at once


class Steps:
    """Runs the steps of a call together: the first in the calling thread, the others on
    workers; waits for all, then raises the first failure in step order (so that a rollback
    always finds everything that was done)."""

    def __init__(self, name: str = "cni-step", max_workers: int = MAX_WORKERS) -> None:
        self._name = name
        self._max_workers = max_workers
        self._lock = threading.Lock()
        self._pools: dict[tuple[int, int], ThreadPoolExecutor] = {}
        self._local = threading.local()

    def together(self, *steps: Callable[[], Any]) -> list[Any]:
        outcomes: list[tuple[Any, BaseException | None]] = []
        helpers = [self._start(step) for step in steps[1:]]
        outcomes.append(_outcome(steps[0]) if steps else (None, None))
        outcomes.extend(_outcome(helper.result) for helper in helpers)
        for _, error in outcomes:
            if error is not None:
                raise error
        return [value for value, _ in outcomes]

    def soon(self, step: Callable[[], None]) -> None:
        """Run `step` on a worker without waiting for it (best-effort follow-ups of a call);
        its failure is logged."""
        self._pool().submit(self._logged, step)

    def _logged(self, step: Callable[[], None]) -> None:
        try:
            self._as_worker(step)
        except Exception:
            log.exception("background step failed")

    def close(self) -> None:
        """Let idle workers go (running steps finish)."""
        with self._lock:
            pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            pool.shutdown(wait=False)

    def _start(self, step: Callable[[], Any]) -> Future[Any]:
        if getattr(self._local, "worker", False):
            # A step that runs steps: a fresh thread, so that the pool never waits on itself.
            return _in_new_thread(step, self._name)
        return self._pool().submit(self._as_worker, step)

    def _as_worker(self, step: Callable[[], Any]) -> Any:
        self._local.worker = True
        return step()

    def _pool(self) -> ThreadPoolExecutor:
        key = _current_netns()
        with self._lock:
            pool = self._pools.get(key)
            if pool is None:
                pool = ThreadPoolExecutor(self._max_workers, thread_name_prefix=self._name)
                self._pools[key] = pool
        return pool


def _outcome(call: Callable[[], Any]) -> tuple[Any, BaseException | None]:
    try:
        return call(), None
    except BaseException as exc:
        return None, exc


def _in_new_thread(step: Callable[[], Any], name: str) -> Future[Any]:
    future: Future[Any] = Future()

    def run() -> None:
        value, error = _outcome(step)
        if error is None:
            future.set_result(value)
        else:
            future.set_exception(error)

    threading.Thread(target=run, name=name, daemon=True).start()
    return future


def _current_netns() -> tuple[int, int]:
    """The calling thread's network namespace, as (device, inode) of its nsfs file."""
    st = os.stat("/proc/thread-self/ns/net")
    return st.st_dev, st.st_ino
