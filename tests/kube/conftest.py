"""Fixtures: a fake API server, a kubeconfig pointing at it, a store and a running source."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from controller.config import AgentConfig
from controller.sources.kube import KubeSource
from controller.store import Change, Store, StoreEvent
from lab.fakeapi import FakeApiServer

NODE = "node-a"
PLURALS = {
    "Pod": "pods",
    "Node": "nodes",
    "Namespace": "namespaces",
    "NetworkPolicy": "networkpolicies",
}


def pod(ns: str, name: str, node: str = NODE, **labels: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": ns, "labels": labels or {"app": name}},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]},
        "status": {"phase": "Running", "podIP": "10.0.0.1"},
    }


def node(name: str, cidr: str = "10.244.0.0/24") -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {"podCIDR": cidr, "podCIDRs": [cidr]}}


def namespace(name: str, **labels: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": labels}}


def policy(ns: str, name: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": ns},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
    }


def populate(api: FakeApiServer, pods: int = 30) -> None:
    api.load("nodes", [node(NODE), node("node-b", "10.244.1.0/24")])
    api.load("namespaces", [namespace(f"ns{i}", team=str(i)) for i in range(3)])
    api.load(
        "pods",
        [pod(f"ns{i % 3}", f"p{i}", NODE if i % 2 else "node-b") for i in range(pods)],
    )
    api.load("networkpolicies", [policy("ns0", "deny"), policy("ns1", "deny")])


def identity(obj: dict[str, Any]) -> tuple[str, str, str]:
    meta = obj["metadata"]
    return (meta.get("namespace", ""), meta["name"], meta["resourceVersion"])


def server_state(api: FakeApiServer, kind: str) -> set[tuple[str, str, str]]:
    """(namespace, name, resourceVersion) of every object the server holds."""
    return {identity(o) for o in api.objects(PLURALS[kind])}


def store_state(store: Store, kind: str) -> set[tuple[str, str, str]]:
    return {identity(o) for o in store.objects(kind)}


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def assert_converged(store: Store, api: FakeApiServer, timeout: float = 10.0) -> None:
    """The store holds exactly the server's objects, at the server's resourceVersions."""

    def converged() -> bool:
        return all(store_state(store, kind) == server_state(api, kind) for kind in PLURALS)

    if not wait_for(converged, timeout):
        for kind in PLURALS:
            missing = server_state(api, kind) - store_state(store, kind)
            extra = store_state(store, kind) - server_state(api, kind)
            assert not missing and not extra, f"{kind}: missing {missing}, extra {extra}"
    for kind in PLURALS:
        assert store.count(kind) == len(server_state(api, kind))


@dataclass
class Recorder:
    """Every store event, to check that nothing is notified twice or out of order."""

    events: list[StoreEvent] = field(default_factory=list)
    since: int = 0

    def __call__(self, event: StoreEvent) -> None:
        self.events.append(event)

    def mark(self) -> None:
        """Start `recent` here."""
        self.since = len(self.events)

    @property
    def recent(self) -> list[StoreEvent]:
        return self.events[self.since :]

    def for_key(self, kind: str, ns: str, name: str) -> list[Change]:
        return [e.change for e in self.recent if e.key == (kind, ns, name)]

    def check_consistent(self) -> None:
        """Per key, over all events: ADDED only when absent, UPDATED/DELETED only when
        present, and an UPDATED always brings a new resourceVersion."""
        present: dict[tuple[str, str, str], str] = {}
        for e in self.events:
            if e.change is Change.ADDED:
                assert e.key not in present, f"{e.key} added twice"
                present[e.key] = e.obj["metadata"]["resourceVersion"]
            elif e.change is Change.UPDATED:
                assert e.key in present, f"{e.key} updated while absent"
                new_rv = e.obj["metadata"]["resourceVersion"]
                assert new_rv != present[e.key], f"{e.key} updated to the same version"
                present[e.key] = new_rv
            else:
                assert e.key in present, f"{e.key} deleted while absent"
                del present[e.key]


@dataclass
class Harness:
    api: FakeApiServer
    store: Store
    source: KubeSource
    recorder: Recorder

    def list_requests(self, path: str) -> int:
        return sum(1 for p, q in list(self.api.requests) if p == path and "watch" not in q)

    def watch_requests(self, path: str) -> list[dict[str, str]]:
        return [q for p, q in list(self.api.requests) if p == path and q.get("watch") == "true"]


def write_kubeconfig(path: Path, url: str) -> Path:
    path.write_text(
        "apiVersion: v1\nkind: Config\n"
        f"clusters:\n- name: fake\n  cluster:\n    server: {url}\n"
        "users:\n- name: agent\n  user:\n    token: test-token\n"
        "contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: agent\n"
        "current-context: fake\n"
    )
    return path


@pytest.fixture
def make_harness(tmp_path: Path) -> Iterator[Callable[..., Harness]]:
    made: list[Harness] = []

    def make(
        *, gone_as_event: bool = True, pods: int = 30, start: bool = True, **source_args: Any
    ) -> Harness:
        api = FakeApiServer(bookmark_interval=0.2, gone_as_event=gone_as_event)
        populate(api, pods)
        api.start()
        config = AgentConfig(
            node_name=NODE,
            source="kubernetes",
            kubeconfig=str(write_kubeconfig(tmp_path / "kubeconfig", api.url)),
        )
        store = Store()
        recorder = Recorder()
        store.add_handler(recorder)
        args: dict[str, Any] = {"page_size": 7, "backoff_base": 0.05, "backoff_cap": 0.5, "seed": 1}
        args.update(source_args)
        source = KubeSource(config, store, **args)
        harness = Harness(api, store, source, recorder)
        made.append(harness)
        if start:
            source.start()
            assert source.wait_synced(10), "source did not sync"
        return harness

    yield make
    for h in made:
        h.source.stop()
        h.api.stop()
