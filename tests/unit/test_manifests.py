"""manifests/: every Kubernetes object validates offline against the 1.30 OpenAPI schemas, and the
deployment says what the design asks (least privilege, host mounts, atomic CNI install, ...)."""

from __future__ import annotations

import copy
import json
import shlex
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from controller.config import config_from_mapping

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "manifests"
KUBE_VERSION = "1.30.0"
NOT_KUBERNETES = ("kind.x-k8s.io/",)  # kind's own config is not a cluster object

Doc = dict[str, Any]


def kubernetes_documents() -> list[tuple[str, Doc]]:
    docs = []
    for path in sorted(MANIFESTS.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and not str(doc.get("apiVersion", "")).startswith(NOT_KUBERNETES):
                docs.append((f"{path.name}:{doc['kind']}/{doc['metadata']['name']}", doc))
    return docs


DOCS = kubernetes_documents()


def find(kind: str) -> Doc:
    matches = [doc for _, doc in DOCS if doc["kind"] == kind]
    assert len(matches) == 1, f"expected one {kind}, found {len(matches)}"
    return matches[0]


def pod_spec() -> Doc:
    spec: Doc = find("DaemonSet")["spec"]["template"]["spec"]
    return spec


def container(name: str) -> Doc:
    spec = pod_spec()
    for c in spec["containers"] + spec.get("initContainers", []):
        if c["name"] == name:
            return dict(c)
    raise AssertionError(f"no container {name}")


def validate(doc: Doc) -> None:
    kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)


def test_the_manifests_hold_what_a_cni_needs() -> None:
    kinds = sorted(doc["kind"] for _, doc in DOCS)
    assert kinds == sorted(
        [
            "Namespace",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "ConfigMap",
            "DaemonSet",
        ]
    )


@pytest.mark.parametrize(("name", "doc"), DOCS, ids=[name for name, _ in DOCS])
def test_every_object_validates_against_the_schema(name: str, doc: Doc) -> None:
    validate(doc)


@pytest.mark.parametrize(
    ("what", "path", "value"),
    [
        ("unknown field", ["spec", "template", "spec", "hostNetwrok"], True),
        ("wrong type", ["spec", "template", "spec", "hostNetwork"], "yes"),
        ("missing required", ["spec", "selector"], None),
        ("bad enum", ["spec", "updateStrategy", "type"], 5),
    ],
)
def test_validation_catches_a_broken_copy(what: str, path: list[str], value: Any) -> None:
    broken = copy.deepcopy(find("DaemonSet"))
    parent = broken
    for key in path[:-1]:
        parent = parent[key]
    if value is None:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(broken)


def test_rbac_is_read_only_on_exactly_what_the_agent_watches() -> None:
    rules = find("ClusterRole")["rules"]
    granted = {
        (group, resource, verb)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    wanted = {
        (group, resource, verb)
        for group, resource in [
            ("", "pods"),
            ("", "nodes"),
            ("", "namespaces"),
            ("networking.k8s.io", "networkpolicies"),
        ]
        for verb in ("get", "list", "watch")
    }
    assert granted == wanted
    binding = find("ClusterRoleBinding")
    account = find("ServiceAccount")
    assert binding["roleRef"]["name"] == find("ClusterRole")["metadata"]["name"]
    assert binding["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": account["metadata"]["name"],
            "namespace": account["metadata"]["namespace"],
        }
    ]
    assert pod_spec()["serviceAccountName"] == account["metadata"]["name"]


def test_agent_config_in_the_configmap_is_valid() -> None:
    data = yaml.safe_load(find("ConfigMap")["data"]["plumb-agent.yaml"])
    config = config_from_mapping(data, environ={"NODE_NAME": "kind-worker"})
    assert config.source == "kubernetes"
    agent = container("plumb-agent")
    assert agent["command"][-1] == "/etc/plumb/plumb-agent.yaml"
    host, port = config.health_host_port
    for probe in ("livenessProbe", "readinessProbe"):
        assert agent[probe]["httpGet"]["port"] == port
        assert agent[probe]["httpGet"]["host"] == host
    assert agent["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert agent["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}} in (
        agent["env"]
    )


def test_conflist() -> None:
    conflist = json.loads(find("ConfigMap")["data"]["10-plumb.conflist"])
    assert conflist["cniVersion"] == "1.0.0"
    assert "1.0.0" in conflist["cniVersions"]
    assert conflist["name"] == "plumb"
    [plugin] = conflist["plugins"]
    assert plugin["type"] == "plumb"
    assert "ipam" not in plugin  # the agent's own allocator (docs/cni.md)


def test_daemonset_runs_everywhere_privileged_on_the_host_network() -> None:
    spec = pod_spec()
    assert spec["hostNetwork"] is True
    assert spec["priorityClassName"] == "system-node-critical"
    assert {"operator": "Exists"} in spec["tolerations"]
    assert [c["name"] for c in spec["containers"]] == [
        "ovsdb-server",
        "ovs-vswitchd",
        "plumb-agent",
    ]
    for name in ("ovs-vswitchd", "plumb-agent"):
        assert container(name)["securityContext"]["privileged"] is True
    namespace = find("Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"


def test_host_mounts() -> None:
    volumes = {v["name"]: v for v in pod_spec()["volumes"]}
    host_paths = {v["hostPath"]["path"]: name for name, v in volumes.items() if "hostPath" in v}
    for path in (
        "/var/run/openvswitch",
        "/var/run/plumb",
        "/opt/cni/bin",
        "/etc/cni/net.d",
        "/var/lib/cni",
        "/run/netns",
        "/lib/modules",
    ):
        assert path in host_paths, f"no hostPath volume for {path}"
    mounts = {m["mountPath"]: m for m in container("plumb-agent")["volumeMounts"]}
    assert mounts["/run/netns"]["mountPropagation"] == "HostToContainer"
    assert mounts["/lib/modules"]["readOnly"] is True
    assert volumes[mounts["/var/run/plumb"]["name"]]["hostPath"]["path"] == "/var/run/plumb"
    vswitchd = {m["mountPath"]: m for m in container("ovs-vswitchd")["volumeMounts"]}
    assert vswitchd["/lib/modules"]["readOnly"] is True


def test_init_container_installs_atomically() -> None:
    init = container("install-cni")
    script = init["command"][-1]
    lines = [shlex.split(line) for line in script.strip().splitlines()]
    moves = {line[-1]: line[-2] for line in lines if line[:2] == ["mv", "-f"]}
    for target in ("/host/opt/cni/bin/plumb", "/host/etc/cni/net.d/10-plumb.conflist"):
        temp = moves[target]
        assert Path(temp).parent == Path(target).parent, "rename must stay on one filesystem"
        written = [i for i, line in enumerate(lines) if line and line[-1] == temp]
        renamed = [
            i for i, line in enumerate(lines) if line[:2] == ["mv", "-f"] and line[-1] == target
        ]
        assert written and renamed and written[0] < renamed[0]
    # The temporary conflist must not look like a network config to the runtime meanwhile.
    assert not moves["/host/etc/cni/net.d/10-plumb.conflist"].endswith(
        (".conf", ".conflist", ".json")
    )


def test_kind_config() -> None:
    config = yaml.safe_load((MANIFESTS / "kind-config.yaml").read_text())
    assert config["kind"] == "Cluster"
    assert config["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    assert config["networking"]["disableDefaultCNI"] is True
    assert [n["role"] for n in config["nodes"]] == ["control-plane", "worker", "worker"]


def test_dockerfile() -> None:
    lines = [
        line.strip()
        for line in (MANIFESTS / "Dockerfile").read_text().replace("\\\n", " ").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    froms = [line.split()[1] for line in lines if line.startswith("FROM ")]
    assert froms and all(image.startswith("debian:12") for image in froms)
    text = "\n".join(lines)
    assert "openvswitch-switch" in text
    assert "pip install" in text
    for line in lines:
        if line.startswith("COPY ") and "--from=" not in line:
            for source in line.split()[1:-1]:
                assert (REPO / source).exists(), f"Dockerfile copies missing {source}"
    assert "/usr/local/lib/plumb/plumb" in text  # where install-cni takes the executable from
    assert "/usr/local/lib/plumb/plumb" in container("install-cni")["command"][-1]


def test_kind_smoke_reports_what_is_missing_and_exits_cleanly(tmp_path: Path) -> None:
    script = MANIFESTS / "kind-smoke.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    # A PATH holding only the basics: kind, docker and kubectl are certainly missing.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("dirname", "sed", "grep"):
        found = subprocess.run(["bash", "-c", f"command -v {tool}"], capture_output=True, text=True)
        (bin_dir / tool).symlink_to(found.stdout.strip())
    result = subprocess.run(
        ["/bin/bash", str(script)],
        env={"PATH": str(bin_dir)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "skipped: missing kind, docker, kubectl" in result.stdout
