"""The Kubernetes source converges the store to the API server's state, whatever happens."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from controller import metrics
from controller.config import AgentConfig
from controller.errors import ConfigError
from controller.sources.kube import LOCAL_PODS, KubeSource, backoff_with_jitter, iter_lines
from controller.store import Change, Store

from .conftest import NODE, Harness, assert_converged, namespace, node, pod, policy, wait_for

MakeHarness = Callable[..., Harness]


def test_initial_list(make_harness: MakeHarness) -> None:
    h = make_harness(pods=30)
    assert_converged(h.store, h.api)
    assert h.store.count("Pod") == 30
    assert {p["metadata"]["name"] for p in h.store.pods_on_node(NODE)} == {
        f"p{i}" for i in range(1, 30, 2)
    }
    assert len(h.store.pods_in_namespace("ns1")) == 10
    for name in (LOCAL_PODS, "pods", "Pod", "Node", "Namespace", "NetworkPolicy"):
        assert h.store.is_synced(name)
    # Paged: 15 pods per pod stream in pages of 7 is 3 requests each, then one watch each.
    assert h.list_requests("/api/v1/pods") == 6
    assert wait_for(lambda: len(h.watch_requests("/api/v1/pods")) == 2)
    selectors = {q.get("fieldSelector") for q in h.watch_requests("/api/v1/pods")}
    assert selectors == {f"spec.nodeName={NODE}", f"spec.nodeName!={NODE}"}
    for q in h.watch_requests("/api/v1/pods"):
        assert q["allowWatchBookmarks"] == "true"
        assert int(q["resourceVersion"]) > 0
    assert all(e.change is Change.ADDED for e in h.recorder.events)
    h.recorder.check_consistent()


def test_added_modified_deleted(make_harness: MakeHarness) -> None:
    h = make_harness()
    h.recorder.mark()
    h.api.create("pods", pod("ns0", "new-local"))
    h.api.create("pods", pod("ns0", "new-remote", "node-b"))
    h.api.update("pods", pod("ns1", "p1", app="changed"))
    h.api.delete("pods", "ns2", "p2")
    h.api.create("nodes", node("node-c", "10.244.2.0/24"))
    h.api.update("nodes", node("node-b", "10.244.9.0/24"))
    h.api.create("namespaces", namespace("ns9"))
    h.api.delete("namespaces", "", "ns0")
    h.api.create("networkpolicies", policy("ns2", "allow"))
    h.api.delete("networkpolicies", "ns1", "deny")
    assert_converged(h.store, h.api)
    assert h.recorder.for_key("Pod", "ns0", "new-local") == [Change.ADDED]
    assert h.recorder.for_key("Pod", "ns0", "new-remote") == [Change.ADDED]
    assert h.recorder.for_key("Pod", "ns1", "p1") == [Change.UPDATED]
    assert h.recorder.for_key("Pod", "ns2", "p2") == [Change.DELETED]
    assert h.recorder.for_key("Node", "", "node-b") == [Change.UPDATED]
    assert h.recorder.for_key("Namespace", "", "ns0") == [Change.DELETED]
    assert h.recorder.for_key("NetworkPolicy", "ns1", "deny") == [Change.DELETED]
    assert len(h.recorder.recent) == 10
    updated = h.store.get("Pod", "ns1", "p1")
    assert updated is not None and updated["metadata"]["labels"] == {"app": "changed"}
    assert "new-local" in {p["metadata"]["name"] for p in h.store.pods_on_node(NODE)}
    h.recorder.check_consistent()


def test_pod_scheduled_to_this_node_moves_between_streams(make_harness: MakeHarness) -> None:
    h = make_harness()
    h.api.create("pods", pod("ns0", "pending", node=""))
    assert wait_for(lambda: h.store.get("Pod", "ns0", "pending") is not None)
    h.api.update("pods", pod("ns0", "pending", node=NODE))  # the scheduler binds it here
    assert_converged(h.store, h.api)
    bound = h.store.get("Pod", "ns0", "pending")
    assert bound is not None and bound["spec"]["nodeName"] == NODE
    assert "pending" in {p["metadata"]["name"] for p in h.store.pods_on_node(NODE)}
    h.api.delete("pods", "ns0", "pending")
    assert_converged(h.store, h.api)
    h.recorder.check_consistent()


def test_dropped_watch_resumes_from_its_resource_version(make_harness: MakeHarness) -> None:
    h = make_harness()
    lists_before = h.list_requests("/api/v1/pods")
    watches_before = len(h.watch_requests("/api/v1/pods"))
    assert wait_for(lambda: h.api.open_watches == 5)
    rv_before = h.api.resource_version
    assert h.api.drop_watches() == 5
    h.api.create("pods", pod("ns0", "during-drop"))
    h.api.delete("pods", "ns0", "p3")
    assert_converged(h.store, h.api)
    assert wait_for(lambda: len(h.watch_requests("/api/v1/pods")) >= watches_before + 2)
    assert h.list_requests("/api/v1/pods") == lists_before  # no relist: the rv carried over
    resumed = h.watch_requests("/api/v1/pods")[watches_before:]
    assert all(int(q["resourceVersion"]) >= rv_before for q in resumed)
    h.recorder.check_consistent()


def test_bookmarks_move_the_resource_version_forward(make_harness: MakeHarness) -> None:
    h = make_harness()
    watches_before = len(h.watch_requests("/apis/networking.k8s.io/v1/networkpolicies"))
    for i in range(5):  # changes elsewhere: the policy stream hears of them only by bookmark
        h.api.create("namespaces", namespace(f"extra{i}"))
    target = h.api.resource_version
    time.sleep(0.6)  # a few bookmark intervals
    h.api.drop_watches()
    assert wait_for(
        lambda: len(h.watch_requests("/apis/networking.k8s.io/v1/networkpolicies")) > watches_before
    )
    resumed = h.watch_requests("/apis/networking.k8s.io/v1/networkpolicies")[-1]
    assert int(resumed["resourceVersion"]) >= target


@pytest.mark.parametrize("gone_as_event", [True, False], ids=["error-event", "http-410"])
def test_410_gone_relists_and_converges(make_harness: MakeHarness, gone_as_event: bool) -> None:
    h = make_harness(gone_as_event=gone_as_event)
    lists_before = h.list_requests("/api/v1/pods")
    h.recorder.mark()
    # The server moves on and forgets its history; then every watch has to reconnect.
    h.api.create("pods", pod("ns0", "born-while-away"))
    h.api.create("pods", pod("ns1", "remote-born", "node-b"))
    h.api.update("pods", pod("ns1", "p1", app="changed"))
    h.api.delete("pods", "ns2", "p5")
    h.api.delete("pods", "ns0", "p6")
    h.api.delete("namespaces", "", "ns2")
    h.api.compact()
    h.api.drop_watches()
    assert_converged(h.store, h.api)
    assert wait_for(lambda: h.list_requests("/api/v1/pods") > lists_before)
    h.recorder.check_consistent()
    # Only real changes were notified: the relist of unchanged objects is silent.
    changed = {e.key for e in h.recorder.recent}
    assert changed == {
        ("Pod", "ns0", "born-while-away"),
        ("Pod", "ns1", "remote-born"),
        ("Pod", "ns1", "p1"),
        ("Pod", "ns2", "p5"),
        ("Pod", "ns0", "p6"),
        ("Namespace", "", "ns2"),
    }
    assert len(h.recorder.recent) == len(changed)


def test_server_errors_are_retried_with_backoff(make_harness: MakeHarness) -> None:
    h = make_harness(start=False)
    before = metrics.WATCH_ERRORS.labels("nodes", "http_500")._value.get()
    h.api.fail_next(4, 500)
    h.source.start()
    assert h.source.wait_synced(10)
    assert_converged(h.store, h.api)
    errors = sum(
        metrics.WATCH_ERRORS.labels(s.name, "http_500")._value.get() for s in h.source.streams
    )
    assert errors - before >= 4


def test_stop_is_prompt_and_closes_every_watch(make_harness: MakeHarness) -> None:
    h = make_harness()
    assert wait_for(lambda: h.api.open_watches == 5)
    started = time.monotonic()
    h.source.stop()
    assert time.monotonic() - started < 3
    assert not [t for t in threading.enumerate() if t.name.startswith("kube-")]
    assert wait_for(lambda: h.api.open_watches == 0, 5)


def test_watch_timeout_rewatches_without_relisting(make_harness: MakeHarness) -> None:
    h = make_harness(watch_timeout=(1.0, 1.0))
    lists_before = h.list_requests("/api/v1/nodes")
    assert wait_for(lambda: len(h.watch_requests("/api/v1/nodes")) >= 3, 10)
    h.api.create("nodes", node("late"))
    assert_converged(h.store, h.api)
    assert h.list_requests("/api/v1/nodes") == lists_before


@pytest.mark.timeout(120)
def test_server_down_for_30_seconds_and_back(make_harness: MakeHarness) -> None:
    h = make_harness()
    objects_before = {kind: h.store.count(kind) for kind in ("Pod", "Node", "Namespace")}
    h.recorder.mark()
    h.api.stop()
    # While away the cluster changes and the server forgets its history.
    h.api.create("pods", pod("ns0", "created-while-down"))
    h.api.update("pods", pod("ns1", "p1", app="changed-while-down"))
    h.api.delete("pods", "ns0", "p0")
    h.api.delete("nodes", "", "node-b")
    h.api.compact()
    time.sleep(30)
    # Nothing was dropped from the store while the server was unreachable.
    assert h.recorder.recent == []
    assert {kind: h.store.count(kind) for kind in objects_before} == objects_before
    h.api.start()
    assert_converged(h.store, h.api, timeout=10)
    h.recorder.check_consistent()
    assert {e.key for e in h.recorder.recent} == {
        ("Pod", "ns0", "created-while-down"),
        ("Pod", "ns1", "p1"),
        ("Pod", "ns0", "p0"),
        ("Node", "", "node-b"),
    }
    # And it keeps following the server afterwards.
    h.api.create("pods", pod("ns2", "after"))
    assert_converged(h.store, h.api)


def test_iter_lines_handles_any_chunking() -> None:
    data = b'{"a":1}\n{"b":2}\n\n{"c":3}\n{"d":4}'
    for size in (1, 2, 3, 7, 100):
        chunks = [data[i : i + size] for i in range(0, len(data), size)]
        assert list(iter_lines(iter(chunks))) == [b'{"a":1}', b'{"b":2}', b'{"c":3}', b'{"d":4}']


def test_backoff_with_jitter_stays_in_its_band() -> None:
    rand = random.Random(7)
    for failures, full in [(0, 0.5), (1, 1.0), (2, 2.0), (10, 5.0)]:
        delays = [backoff_with_jitter(failures, 0.5, 5.0, rand) for _ in range(200)]
        assert all(full / 2 <= d <= full for d in delays)
        assert max(delays) - min(delays) > full / 10  # jittered, not constant


def test_late_event_from_the_other_pod_stream_cannot_clobber_a_local_pod(
    make_harness: MakeHarness,
) -> None:
    # The race is between two threads; replay it in order: the local stream has seen the pod
    # bound here, then the all-pods stream delivers its older "unscheduled" state and deletion.
    h = make_harness(start=False)
    local, others = h.source.streams[0], h.source.streams[1]
    assert (local.name, others.name) == (LOCAL_PODS, "pods")
    bound = {**pod("ns0", "x", node=NODE), "metadata": {"name": "x", "namespace": "ns0"}}
    bound["metadata"]["resourceVersion"] = "20"
    stale = {**pod("ns0", "x", node=""), "metadata": {"name": "x", "namespace": "ns0"}}
    stale["metadata"]["resourceVersion"] = "19"
    h.source._apply(local, {"type": "ADDED", "object": bound})
    h.source._apply(others, {"type": "MODIFIED", "object": stale})
    h.source._apply(others, {"type": "DELETED", "object": stale})
    kept = h.store.get("Pod", "ns0", "x")
    assert kept is not None and kept["metadata"]["resourceVersion"] == "20"


def test_unloadable_kubeconfig_is_a_config_error(tmp_path: Path) -> None:
    bad = tmp_path / "kubeconfig"
    bad.write_text("apiVersion: v1\nkind: Config\nclusters: []\n")
    for path in (bad, tmp_path / "missing"):
        config = AgentConfig(node_name=NODE, source="kubernetes", kubeconfig=str(path))
        with pytest.raises(ConfigError) as info:
            KubeSource(config, Store()).start()
        assert info.value.field == "kubeconfig"
