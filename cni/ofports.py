"""OpenFlow port numbers the agent picks for pod ports (OVS `ofport_request`), so that a pod's
flows can be installed while ovs-vswitchd is still attaching its port, instead of after.

Numbers are handed out round-robin, so a number freed by a DEL is not reused at once (flows
naming it may still be on their way out), and never while another pod, an ADD in flight or a
port the agent found on the bridge holds it. OVS may still give a port another number (a port
added behind the agent's back holds it): the caller compares and corrects.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Final

from cni.protocol import CniError, ErrorCode

# The tunnel (32768) and gateway (32769) ports request numbers above this range.
FIRST: Final = 1
LAST: Final = 32767


class OfportPool:
    """Round-robin port numbers in [first, last]; thread-safe."""

    def __init__(self, first: int = FIRST, last: int = LAST) -> None:
        self.first = first
        self.last = last
        self._lock = threading.Lock()
        self._cursor = last  # the next number handed out is `first`
        self._pending: set[int] = set()
        self._foreign: set[int] = set()

    def learn(self, foreign: Iterable[int], seen: Iterable[int] = ()) -> None:
        """`foreign`: numbers held by ports on the bridge that are no pod's (read at start, or
        after a surprise). `seen` (at start only): every number on the bridge; the cursor moves
        to the highest, so that a restarted agent goes on after the numbers it last used."""
        with self._lock:
            self._foreign = {n for n in foreign if self.first <= n <= self.last}
            highest = max((n for n in seen if self.first <= n <= self.last), default=0)
            if highest and not self._pending:
                self._cursor = highest

    def take(self, in_use: Callable[[], Iterable[int]]) -> int:
        """A free number, pending until `done`. `in_use` (the pods' numbers) is read under the
        pool's lock, so a number cannot move from pending to in-use unseen."""
        with self._lock:
            taken = self._pending | self._foreign | set(in_use())
            span = self.last - self.first + 1
            for step in range(1, span + 1):
                candidate = self.first + (self._cursor - self.first + step) % span
                if candidate not in taken:
                    self._cursor = candidate
                    self._pending.add(candidate)
                    return candidate
        raise CniError(ErrorCode.OVS_FAILURE, "no free OpenFlow port number", "bridge full")

    def done(self, ofport: int) -> None:
        """The ADD that took `ofport` finished: its number is now a pod's, or free again."""
        with self._lock:
            self._pending.discard(ofport)
