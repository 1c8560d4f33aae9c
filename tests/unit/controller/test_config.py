"""The agent config: defaults, the environment, one clear error per bad field, docs in step."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from controller.config import (
    AgentConfig,
    config_from_mapping,
    config_markdown,
    config_to_yaml,
    field_docs,
    field_names,
    load_config,
    main,
)
from controller.errors import ConfigError

REPO = Path(__file__).resolve().parents[3]
ENV = {"NODE_NAME": "node-1"}

# At least one bad value per field; each must be refused with an error naming that field.
BAD_VALUES: dict[str, list[object]] = {
    "node_name": ["", "Node_1", "-node", "a" * 254, 7],
    "source": ["kube", "", "Kubernetes"],
    "kubeconfig": ["bad\0path", 3],
    "manifests_dir": ["", "x\0y"],
    "bridge": ["", "a-name-longer-than-15", "br/int", ".br", "br int"],
    "datapath_type": ["kernel", "System ", ""],
    "tunnel_type": ["gre", "VXLAN", ""],
    "ovs_rundir": ["var/run/openvswitch", "", 1],
    "ovs_routes": [
        "10.0.0.0/24",
        "10.0.0.0/24 br-phy 10.0.0.1 x",
        "nope br-phy",
        "10.0.0.0/24 br/phy",
        "10.0.0.0/24 br-phy gw",
        3,
    ],
    "ovsdb_remote": ["db.sock", "unix:relative", "tcp:1.2.3.4", "tcp:host:99999", "ssl::6640"],
    "cni_socket": ["plumb.sock", "/" + "s" * 200],
    "ipam_data_dir": ["var/lib/cni", ""],
    "mtu": [-1, 1, 67, 65536, "1450", True, 1.5],
    "transport_interface": ["eth 0", "averyveryverylongname"],
    "node_address": ["1.2.3", "node-1", "10.0.0.1/24"],
    "health_bind_address": ["9641", ":9641", "host:port", "::1:9641", "[nope]:1", "a:70000"],
    "log_level": ["verbose", "", "warn"],
    "log_format": ["xml", "JSON?"],
}


def test_every_field_has_bad_values_here() -> None:
    assert set(BAD_VALUES) == set(field_names())


@pytest.mark.parametrize(
    ("field", "value"), [(f, v) for f, values in BAD_VALUES.items() for v in values]
)
def test_bad_value_is_one_error_naming_the_field(field: str, value: object) -> None:
    data = {field: value}
    if field != "node_name":
        data["node_name"] = "node-1"
    with pytest.raises(ConfigError) as info:
        config_from_mapping(data, environ={})
    assert info.value.field == field
    assert str(info.value).startswith(f"config: {field}: ")


def test_defaults() -> None:
    config = load_config(None, environ=ENV)
    assert config.node_name == "node-1"
    assert config.bridge == "br-int"
    assert config.datapath_type == "system"
    assert config.tunnel_type == "geneve"
    assert config.ovs_rundir == "/var/run/openvswitch"
    assert config.ovsdb_remote == "unix:/var/run/openvswitch/db.sock"
    assert config.cni_socket == "/var/run/plumb/cni.sock"
    assert config.health_host_port == ("127.0.0.1", 9641)
    assert config.mtu == 0
    assert config.log_level == "info"


def test_node_name_is_required() -> None:
    with pytest.raises(ConfigError, match="NODE_NAME") as info:
        load_config(None, environ={})
    assert info.value.field == "node_name"


def test_file_values_win_over_environment(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(
        "node_name: from-file\nsource: kubernetes\ndatapath_type: netdev\n"
        "tunnel_type: none\novs_rundir: /tmp/ovs\nmtu: 1450\nlog_level: DEBUG\n"
        "health_bind_address: '[::1]:0'\nnode_address: 192.0.2.7\n"
    )
    config = load_config(path, environ=ENV)
    assert config.node_name == "from-file"
    assert config.source == "kubernetes"
    assert config.datapath_type == "netdev"
    assert config.tunnel_type == "none"
    assert config.ovsdb_remote == "unix:/tmp/ovs/db.sock"  # follows ovs_rundir
    assert config.mtu == 1450
    assert config.log_level == "debug"
    assert config.health_host_port == ("::1", 0)


def test_explicit_ovsdb_remote_is_kept() -> None:
    config = config_from_mapping({"ovsdb_remote": "tcp:127.0.0.1:6640"}, environ=ENV)
    assert config.ovsdb_remote == "tcp:127.0.0.1:6640"


def test_empty_value_means_default(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text("bridge:\nnode_name:\n")
    config = load_config(path, environ=ENV)
    assert config.bridge == "br-int" and config.node_name == "node-1"


def test_unknown_field_is_named_with_a_hint() -> None:
    with pytest.raises(ConfigError, match="did you mean 'datapath_type'") as info:
        config_from_mapping({"datapath": "netdev"}, environ=ENV)
    assert info.value.field == "datapath"


@pytest.mark.parametrize(
    ("text", "message"),
    [("- a\n- b\n", "must hold a mapping"), ("a: [\n", "not valid YAML")],
)
def test_bad_file_is_named(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        load_config(path, environ=ENV)
    assert info.value.field == str(path)


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read") as info:
        load_config(tmp_path / "nope.yaml", environ=ENV)
    assert info.value.field == str(tmp_path / "nope.yaml")


def test_config_is_frozen() -> None:
    config = load_config(None, environ=ENV)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.bridge = "br-x"  # type: ignore[misc]


def test_every_field_has_a_docstring() -> None:
    docs = field_docs()
    assert set(docs) == set(field_names())
    assert all(len(doc) > 20 for doc in docs.values())


def test_docs_config_md_agrees_with_the_code() -> None:
    text = (REPO / "docs" / "config.md").read_text()
    assert text == config_markdown(), "regenerate: python -m controller.config --markdown"
    for name in field_names():
        assert f"| `{name}` |" in text


def test_effective_config_round_trips_through_yaml(tmp_path: Path) -> None:
    config = config_from_mapping({"bridge": "br-lab", "mtu": 1400}, environ=ENV)
    path = tmp_path / "agent.yaml"
    path.write_text(config_to_yaml(config))
    assert load_config(path, environ={}) == config


def test_cli_checks_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("node_name: n1\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("node_name: n1\ntunnel_type: gre\n")
    assert main([str(good)]) == 0
    assert "node_name: n1" in capsys.readouterr().out
    assert main([str(bad)]) == 1
    assert "config: tunnel_type: must be one of geneve, vxlan, none" in capsys.readouterr().err


def test_constructing_directly_validates() -> None:
    with pytest.raises(ConfigError, match="bridge"):
        AgentConfig(node_name="n1", bridge="")
