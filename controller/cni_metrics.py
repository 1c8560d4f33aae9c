"""CNI requests measured: a `cni.server.CniBackend` wrapper feeding plumb_agent_ metrics.

The cni room cannot import the controller's metrics, so the agent wraps the pod network in this
before handing it to the CNI server.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from cni.podnet import PodNetwork
from cni.protocol import Request, Result
from controller import metrics

T = TypeVar("T")


class MeteredBackend:
    """Counts and times every CNI command; keeps plumb_agent_local_pods current."""

    def __init__(self, podnet: PodNetwork) -> None:
        self.podnet = podnet
        metrics.LOCAL_PODS.set(len(podnet.store))

    def add(self, req: Request) -> Result:
        return self._measure("ADD", lambda: self.podnet.add(req))

    def delete(self, req: Request) -> None:
        self._measure("DEL", lambda: self.podnet.delete(req))

    def check(self, req: Request) -> None:
        self._measure("CHECK", lambda: self.podnet.check(req))

    def gc(self, req: Request) -> None:
        self._measure("GC", lambda: self.podnet.gc(req))

    def status(self, req: Request) -> None:
        self._measure("STATUS", lambda: self.podnet.status(req))

    def _measure(self, command: str, call: Callable[[], T]) -> T:
        started = time.perf_counter()
        result = "error"
        try:
            value = call()
            result = "success"
            return value
        finally:
            metrics.CNI_REQUESTS.labels(command, result).inc()
            metrics.CNI_REQUEST_SECONDS.labels(command).observe(time.perf_counter() - started)
            metrics.LOCAL_PODS.set(len(self.podnet.store))
