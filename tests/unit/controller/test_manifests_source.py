"""The manifests source against temporary directories: the store follows the files."""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from controller.config import AgentConfig
from controller.sources import manifests
from controller.sources.manifests import MalformedObject, ManifestsSource, check_object
from controller.store import KINDS, Store, StoreEvent

POLL = 0.02

NODE = """\
apiVersion: v1
kind: Node
metadata: {name: node-a}
spec: {podCIDR: 10.10.1.0/24}
status:
  addresses: [{type: InternalIP, address: 192.168.77.11}]
"""

PODS = """\
apiVersion: v1
kind: Pod
metadata: {name: web-0, namespace: shop, labels: {app: web}}
spec:
  nodeName: node-a
  containers: [{name: web, image: nginx, ports: [{containerPort: 80}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: client}
spec: {nodeName: node-a}
"""

POLICY = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: shop}
spec: {podSelector: {}, policyTypes: [Ingress]}
"""


def write(path: Path, text: str) -> None:
    """Write the way the lab should: a hidden temporary file renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def eventually(check: Callable[[], bool], timeout: float = 1.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not within the time allowed"
        time.sleep(0.01)


def names(store: Store, kind: str) -> set[str]:
    return {o["metadata"]["name"] for o in store.objects(kind)}


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    d = tmp_path / "manifests"
    d.mkdir()
    return d


@pytest.fixture
def store() -> Store:
    return Store()


@pytest.fixture
def make_source(directory: Path, store: Store) -> Iterator[Callable[[], ManifestsSource]]:
    made: list[ManifestsSource] = []

    def make(start: bool = True) -> ManifestsSource:
        config = AgentConfig(node_name="node-a", manifests_dir=str(directory))
        source = ManifestsSource(config, store, poll_interval=POLL)
        made.append(source)
        if start:
            source.start()
        return source

    yield make
    for source in made:
        source.stop()


def test_reads_every_kind_and_marks_synced(directory, store, make_source):
    write(directory / "node.yaml", NODE)
    write(directory / "shop" / "pods.yml", PODS)
    write(directory / "policy.yaml", POLICY)
    source = make_source()
    assert source.wait_synced(1)
    assert set(source.sync_names) == {"manifests", *KINDS}
    assert names(store, "Node") == {"node-a"}
    assert store.get("Pod", "shop", "web-0")["spec"]["containers"][0]["ports"] == [
        {"containerPort": 80}
    ]
    # kubectl's rule: a namespaced object without a namespace lands in "default".
    assert store.get("Pod", "default", "client") is not None
    assert store.get("NetworkPolicy", "shop", "deny-all")["spec"]["policyTypes"] == ["Ingress"]
    node = store.get("Node", "", "node-a")
    assert node["status"]["addresses"] == [{"type": "InternalIP", "address": "192.168.77.11"}]


def test_add_change_and_remove_reach_the_store_within_a_second(directory, store, make_source):
    source = make_source()
    assert source.wait_synced(1)
    write(directory / "pods.yaml", PODS)
    eventually(lambda: names(store, "Pod") == {"web-0", "client"})
    # The lab writes the pod's IP back into its file.
    write(directory / "pods.yaml", PODS.replace("spec: {nodeName: node-a}\n", WITH_IP))
    eventually(lambda: pod_ip(store, "default", "client") == "10.10.1.7")
    (directory / "pods.yaml").unlink()
    eventually(lambda: store.count("Pod") == 0)


WITH_IP = "spec: {nodeName: node-a}\nstatus: {phase: Running, podIP: 10.10.1.7}\n"


def pod_ip(store: Store, namespace: str, name: str) -> str | None:
    pod = store.get("Pod", namespace, name)
    return None if pod is None else pod.get("status", {}).get("podIP")


def test_a_file_rewritten_in_place_is_noticed(directory, store, make_source):
    path = directory / "node.yaml"
    path.write_text(NODE)
    make_source()
    with path.open("w") as f:  # truncated and written in place: same inode
        f.write(NODE.replace("10.10.1.0/24", "10.10.9.0/24"))
    eventually(lambda: store.get("Node", "", "node-a")["spec"]["podCIDR"] == "10.10.9.0/24")


def test_same_stamp_different_content_is_noticed(directory, store, make_source, monkeypatch):
    # A same-size rewrite within one timestamp tick leaves the stat unchanged.
    now = time.time_ns()
    monkeypatch.setattr(manifests, "_stamp", lambda path: (now, now, 1, 1))
    write(directory / "node.yaml", NODE)
    source = make_source(start=False)
    source.scan()
    write(directory / "node.yaml", NODE.replace("node-a", "node-b"))
    assert source.scan()
    assert names(store, "Node") == {"node-b"}


def test_malformed_yaml_is_logged_and_keeps_the_previous_content(
    directory, store, make_source, caplog
):
    write(directory / "node.yaml", NODE)
    write(directory / "pods.yaml", PODS)
    source = make_source(start=False)
    source.scan()
    caplog.set_level(logging.INFO, logger="controller.sources.manifests")
    write(directory / "pods.yaml", "kind: Pod\nmetadata: {name: [unclosed\n")
    write(directory / "broken.yaml", "{{{ not yaml")
    write(directory / "node.yaml", NODE.replace("10.10.1.0/24", "10.10.2.0/24"))
    source.scan()
    assert names(store, "Pod") == {"web-0", "client"}  # the last good pods.yaml
    assert store.get("Node", "", "node-a")["spec"]["podCIDR"] == "10.10.2.0/24"
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any(str(directory / "pods.yaml") in m for m in errors), errors
    assert any(str(directory / "broken.yaml") in m for m in errors), errors
    caplog.clear()
    source.scan()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], "logged once per change"
    write(directory / "pods.yaml", POLICY)
    source.scan()
    assert store.count("Pod") == 0 and names(store, "NetworkPolicy") == {"deny-all"}


def test_a_malformed_object_is_skipped_and_its_neighbours_kept(
    directory, store, make_source, caplog
):
    bad = "kind: Pod\nmetadata: {namespace: x}\n---\nkind: Pod\nmetadata: {name: s}\nspec: [1]\n"
    write(directory / "mixed.yaml", f"{bad}---\n{PODS}---\n- just\n- a list\n")
    caplog.set_level(logging.ERROR, logger="controller.sources.manifests")
    source = make_source()
    assert source.wait_synced(1)
    assert names(store, "Pod") == {"web-0", "client"}
    skipped = [r.getMessage() for r in caplog.records]
    assert len(skipped) == 3 and all(str(directory / "mixed.yaml") in m for m in skipped)


def test_other_kinds_lists_and_ignored_files(directory, store, make_source):
    listing = (
        "apiVersion: v1\nkind: List\nitems:\n"
        "- {kind: Namespace, metadata: {name: shop, labels: {team: a}}}\n"
        "- {kind: ConfigMap, metadata: {name: c, namespace: shop}}\n"
        "- {kind: Service, metadata: {name: web, namespace: shop}, spec: {clusterIP: 10.96.0.9}}\n"
    )
    write(directory / "list.json", listing)  # JSON is YAML; the suffix is accepted
    write(directory / "notes.txt", NODE)
    (directory / ".hidden.yaml").write_text(NODE)
    hidden = directory / "..data"
    hidden.mkdir()
    (hidden / "node.yaml").write_text(NODE)
    source = make_source()
    assert source.wait_synced(1)
    assert names(store, "Namespace") == {"shop"}
    assert names(store, "Service") == {"web"}
    assert store.count("Node") == 0


def test_the_same_object_in_two_files_the_later_path_wins(directory, store, make_source):
    write(directory / "a.yaml", NODE)
    write(directory / "b.yaml", NODE.replace("10.10.1.0/24", "10.10.5.0/24"))
    make_source().wait_synced(1)
    assert store.get("Node", "", "node-a")["spec"]["podCIDR"] == "10.10.5.0/24"
    (directory / "b.yaml").unlink()
    eventually(lambda: store.get("Node", "", "node-a")["spec"]["podCIDR"] == "10.10.1.0/24")


def test_directory_removed_keeps_the_store_and_its_return_is_picked_up(
    directory, store, make_source
):
    write(directory / "node.yaml", NODE)
    write(directory / "pods.yaml", PODS)
    source = make_source()
    assert source.wait_synced(1)
    events: list[StoreEvent] = []
    store.add_handler(events.append)
    shutil.rmtree(directory)
    time.sleep(10 * POLL)
    assert events == [] and names(store, "Pod") == {"web-0", "client"}
    write(directory / "node.yaml", NODE)
    eventually(lambda: store.count("Pod") == 0)
    assert names(store, "Node") == {"node-a"}


def test_unreadable_directory_keeps_the_store(directory, store, make_source, monkeypatch):
    write(directory / "node.yaml", NODE)
    source = make_source(start=False)
    source.scan()

    def refuse(path):
        raise PermissionError(13, "Permission denied", str(path))

    with monkeypatch.context() as patched:
        patched.setattr(os, "scandir", refuse)
        assert source.scan() is False
    assert names(store, "Node") == {"node-a"}


def test_missing_directory_at_start_syncs_when_it_appears(directory, store, make_source):
    shutil.rmtree(directory)
    source = make_source()
    assert not source.wait_synced(0.1)
    write(directory / "node.yaml", NODE)
    assert source.wait_synced(1)
    # A scan may catch the directory before its file: the next poll brings the node.
    deadline = time.monotonic() + 3
    while names(store, "Node") != {"node-a"} and time.monotonic() < deadline:
        time.sleep(0.05)
    assert names(store, "Node") == {"node-a"}


def test_a_rescan_of_unchanged_files_raises_no_events(directory, store, make_source):
    write(directory / "pods.yaml", PODS)
    source = make_source(start=False)
    source.scan()
    events: list[StoreEvent] = []
    store.add_handler(events.append)
    write(directory / "pods.yaml", PODS)  # new inode, same content
    write(directory / "node.yaml", NODE)
    assert source.scan()
    assert [(e.kind, e.name) for e in events] == [("Node", "node-a")]


def test_stop_ends_polling(directory, store, make_source):
    source = make_source()
    source.stop()
    write(directory / "node.yaml", NODE)
    time.sleep(5 * POLL)
    assert store.count("Node") == 0


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        ("text", "mapping"),
        ({"metadata": {"name": "a"}}, "no kind"),
        ({"kind": "Pod"}, "no metadata"),
        ({"kind": "Pod", "metadata": {"name": ""}}, "metadata.name"),
        ({"kind": "Pod", "metadata": {"name": "a", "namespace": 3}}, "namespace"),
        ({"kind": "Node", "metadata": {"name": "a"}, "status": "up"}, "status"),
        ({"kind": "Pod", "metadata": {"name": "a"}, "spec": {"containers": [7]}}, "Pod a"),
        ({"kind": "Pod", "metadata": {"name": "a"}, "spec": {"containers": {"c": 1}}}, "list"),
        (
            {"kind": "Pod", "metadata": {"name": "a"}, "spec": {"containers": [{"ports": [80]}]}},
            r"containers\[0\]\.ports",
        ),
        (
            {"kind": "Pod", "metadata": {"name": "a"}, "spec": {"containers": [{"ports": 80}]}},
            r"containers\[0\]\.ports",
        ),
        ({"kind": "Pod", "metadata": {"name": "a"}, "status": {"podIPs": ["10.0.0.1"]}}, "podIPs"),
        ({"kind": "Pod", "metadata": {"name": "a"}, "status": {"podIPs": "10.0.0.1"}}, "podIPs"),
    ],
)
def test_check_object_names_what_is_wrong(document, reason):
    with pytest.raises(MalformedObject, match=reason):
        check_object(document)


def test_check_object_ignores_other_kinds_and_defaults_the_namespace():
    assert check_object({"kind": "Secret", "metadata": {"name": "s"}}) is None
    pod = check_object({"kind": "Pod", "metadata": {"name": "p"}})
    assert pod is not None and pod[1]["metadata"]["namespace"] == "default"
    node = check_object({"kind": "Node", "metadata": {"name": "n"}})
    assert node is not None and "namespace" not in node[1]["metadata"]
