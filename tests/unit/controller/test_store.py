"""The local store: keys, change events, convergence on replace, indexes, slimming, sync flags."""

from __future__ import annotations

import threading

import pytest

from controller.store import (
    LAST_APPLIED,
    Change,
    KubeObject,
    Store,
    StoreEvent,
    object_key,
    slim,
)


def pod(ns: str, name: str, rv: str = "1", node: str = "n1", **labels: str) -> KubeObject:
    return {
        "metadata": {
            "name": name,
            "namespace": ns,
            "resourceVersion": rv,
            "uid": f"uid-{ns}-{name}",
            "labels": labels,
            "managedFields": [{"manager": "kubelet", "fieldsV1": {"f:status": {}}}],
        },
        "spec": {
            "nodeName": node,
            "containers": [
                {
                    "name": "web",
                    "image": "nginx:1.27",
                    "ports": [{"name": "http", "containerPort": 80, "protocol": "TCP"}],
                    "env": [{"name": "A", "value": "b"}],
                }
            ],
            "volumes": [{"name": "token", "projected": {"sources": []}}],
        },
        "status": {"phase": "Running", "podIP": "10.0.0.5", "conditions": [{"type": "Ready"}]},
    }


def recorder(store: Store, kinds: list[str] | None = None) -> list[StoreEvent]:
    events: list[StoreEvent] = []
    store.add_handler(events.append, kinds)
    return events


def test_add_update_delete_notify_with_old_and_new() -> None:
    store = Store()
    events = recorder(store)
    store.upsert("Pod", pod("a", "p", rv="1"))
    store.upsert("Pod", pod("a", "p", rv="2", app="x"))
    store.delete("Pod", "a", "p")
    assert [e.change for e in events] == [Change.ADDED, Change.UPDATED, Change.DELETED]
    added, updated, deleted = events
    assert added.old is None and added.new is not None
    assert updated.old is added.new
    assert updated.new is not None and updated.new["metadata"]["labels"] == {"app": "x"}
    assert deleted.old is updated.new and deleted.new is None
    assert deleted.key == ("Pod", "a", "p")
    assert store.get("Pod", "a", "p") is None
    assert store.count("Pod") == 0


def test_same_resource_version_is_not_a_change() -> None:
    store = Store()
    events = recorder(store)
    assert store.upsert("Pod", pod("a", "p", rv="7")) is not None
    assert store.upsert("Pod", pod("a", "p", rv="7")) is None
    assert len(events) == 1


def test_objects_without_resource_version_compare_by_content() -> None:
    store = Store()
    ns = {"metadata": {"name": "a", "labels": {"x": "1"}}}
    assert store.upsert("Namespace", ns) is not None
    assert store.upsert("Namespace", ns) is None
    changed = {"metadata": {"name": "a", "labels": {"x": "2"}}}
    event = store.upsert("Namespace", changed)
    assert event is not None and event.change is Change.UPDATED


def test_delete_of_unknown_object_is_silent() -> None:
    store = Store()
    events = recorder(store)
    assert store.delete("Pod", "a", "nope") is None
    assert events == []


def test_handlers_filter_by_kind_and_a_failing_handler_does_not_stop_others() -> None:
    store = Store()

    def broken(event: StoreEvent) -> None:
        raise RuntimeError("boom")

    store.add_handler(broken)
    pods = recorder(store, ["Pod"])
    nodes = recorder(store, ["Node"])
    store.upsert("Pod", pod("a", "p"))
    store.upsert("Node", {"metadata": {"name": "n1", "resourceVersion": "1"}})
    assert [e.kind for e in pods] == ["Pod"]
    assert [e.kind for e in nodes] == ["Node"]


def test_cluster_scoped_kinds_ignore_namespace() -> None:
    store = Store()
    store.upsert("Node", {"metadata": {"name": "n1", "namespace": "junk"}})
    assert object_key("Node", {"metadata": {"name": "n1", "namespace": "x"}}) == ("Node", "", "n1")
    assert store.get("Node", "whatever", "n1") is not None
    assert store.keys("Node") == [("Node", "", "n1")]


def test_replace_converges_without_duplicates() -> None:
    store = Store()
    for i in range(5):
        store.upsert("Pod", pod("a", f"p{i}", rv="1"))
    events = recorder(store)
    listed = [pod("a", "p0", rv="1"), pod("a", "p1", rv="2"), pod("b", "q", rv="3")]
    changes = store.replace("Pod", listed)
    assert sorted((e.change.value, e.name) for e in changes) == sorted(
        [("updated", "p1"), ("added", "q"), ("deleted", "p2"), ("deleted", "p3"), ("deleted", "p4")]
    )
    assert events == changes
    assert sorted(store.keys("Pod")) == [("Pod", "a", "p0"), ("Pod", "a", "p1"), ("Pod", "b", "q")]
    assert store.count("Pod") == 3


def test_replace_only_touches_what_it_owns() -> None:
    store = Store()
    store.upsert("Pod", pod("a", "local", node="me"))
    store.upsert("Pod", pod("a", "remote", node="other"))

    def owns_remote(p: KubeObject) -> bool:
        return bool(p["spec"].get("nodeName") != "me")

    store.replace("Pod", [], owns=owns_remote)
    assert store.keys("Pod") == [("Pod", "a", "local")]


def test_indexes_follow_changes() -> None:
    store = Store()
    store.upsert("Pod", pod("a", "p1", node="n1"))
    store.upsert("Pod", pod("b", "p2", node="n1"))
    store.upsert("Pod", pod("b", "p3", node="n2"))
    assert {p["metadata"]["name"] for p in store.pods_on_node("n1")} == {"p1", "p2"}
    assert {p["metadata"]["name"] for p in store.pods_in_namespace("b")} == {"p2", "p3"}
    store.delete("Pod", "b", "p2")
    assert [p["metadata"]["name"] for p in store.pods_on_node("n1")] == ["p1"]
    assert store.pods_on_node("nowhere") == []
    assert store.pods_in_namespace("none") == []
    assert sorted(store.namespaces_of("Pod")) == ["a", "b"]


def test_custom_index_is_built_over_existing_objects() -> None:
    store = Store()
    store.upsert("Pod", pod("a", "p1", app="web"))
    store.add_index("Pod", "app", lambda p: [p["metadata"].get("labels", {}).get("app", "")])
    store.upsert("Pod", pod("a", "p2", app="web"))
    store.upsert("Pod", pod("a", "p1", rv="2", app="db"))
    assert [p["metadata"]["name"] for p in store.by_index("Pod", "app", "web")] == ["p2"]
    assert [p["metadata"]["name"] for p in store.by_index("Pod", "app", "db")] == ["p1"]


def test_slim_pod_keeps_what_reconcilers_read() -> None:
    full = pod("a", "p", app="web")
    full["metadata"]["annotations"] = {LAST_APPLIED: "{...}", "keep": "me"}
    s = slim("Pod", full)
    assert s["kind"] == "Pod" and s["apiVersion"] == "v1"
    assert s["metadata"] == {
        "name": "p",
        "namespace": "a",
        "uid": "uid-a-p",
        "resourceVersion": "1",
        "labels": {"app": "web"},
        "annotations": {"keep": "me"},
    }
    assert s["spec"] == {
        "nodeName": "n1",
        "containers": [
            {"name": "web", "ports": [{"name": "http", "containerPort": 80, "protocol": "TCP"}]}
        ],
    }
    assert s["status"] == {"phase": "Running", "podIP": "10.0.0.5"}


def test_slim_node_and_policy() -> None:
    node = {
        "metadata": {"name": "n1", "managedFields": [{}]},
        "spec": {"podCIDR": "10.0.1.0/24", "podCIDRs": ["10.0.1.0/24"], "taints": [{}]},
        "status": {"addresses": [{"type": "InternalIP", "address": "1.2.3.4"}], "images": [{}]},
    }
    s = slim("Node", node)
    assert s["spec"] == {"podCIDR": "10.0.1.0/24", "podCIDRs": ["10.0.1.0/24"]}
    assert s["status"] == {"addresses": [{"type": "InternalIP", "address": "1.2.3.4"}]}
    policy = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "np", "namespace": "a", "managedFields": [{}]},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
    }
    s = slim("NetworkPolicy", policy)
    assert s["spec"] == policy["spec"]
    assert s["apiVersion"] == "networking.k8s.io/v1"
    assert "managedFields" not in s["metadata"]


def test_store_can_keep_whole_objects() -> None:
    store = Store(slim_objects=False)
    store.upsert("Pod", pod("a", "p"))
    stored = store.get("Pod", "a", "p")
    assert stored is not None and "managedFields" in stored["metadata"]


def test_object_without_name_is_refused() -> None:
    with pytest.raises(ValueError, match=r"metadata\.name"):
        Store().upsert("Pod", {"metadata": {"namespace": "a"}})


def test_wait_synced() -> None:
    store = Store()
    assert not store.wait_synced(["Pod"], timeout=0.01)
    timer = threading.Timer(0.05, store.mark_synced, args=("Pod",))
    timer.start()
    assert store.wait_synced(["Pod"], timeout=5)
    assert store.is_synced("Pod") and not store.is_synced("Node")
    assert store.synced() == frozenset({"Pod"})


def test_concurrent_writers_lose_nothing() -> None:
    store = Store()
    events = recorder(store)

    def writer(ns: str) -> None:
        for i in range(200):
            store.upsert("Pod", pod(ns, f"p{i}"))
        for i in range(0, 200, 2):
            store.delete("Pod", ns, f"p{i}")

    threads = [threading.Thread(target=writer, args=(f"ns{t}",)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.count("Pod") == 400
    assert len(store.pods_on_node("n1")) == 400
    assert len(events) == 4 * 300


def test_keep_protects_objects_another_source_answers_for() -> None:
    store = Store()
    store.upsert("Pod", pod("a", "p", rv="5", node="me"))

    def is_local(p: KubeObject) -> bool:
        return bool(p["spec"].get("nodeName") == "me")

    # A late, stale event from the all-pods stream must not overwrite or delete the local pod.
    assert store.upsert("Pod", pod("a", "p", rv="3", node=""), keep=is_local) is None
    assert store.delete("Pod", "a", "p", keep=is_local) is None
    stored = store.get("Pod", "a", "p")
    assert stored is not None and stored["metadata"]["resourceVersion"] == "5"
    # Unprotected objects are replaced as usual.
    store.upsert("Pod", pod("a", "q", rv="1", node=""))
    event = store.upsert("Pod", pod("a", "q", rv="2", node=""), keep=is_local)
    assert event is not None and event.change is Change.UPDATED
