"""`plumbctl pipeline`: the table list and `--install` into a private OVS."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from flows.pipeline import TABLES
from plumbctl.main import cli
from tests.unit.flows.goldens import golden_lines


def test_pipeline_lists_every_declared_table():
    result = CliRunner().invoke(cli, ["pipeline"])
    assert result.exit_code == 0
    for t in TABLES.values():
        assert f" {t.id:>2}  {t.name} " in result.output or f"{t.id:>3}  {t.name}" in result.output


@pytest.mark.ovs
def test_pipeline_install_prints_the_skeleton_as_ovs_dumps_it(ovs):
    result = CliRunner().invoke(cli, ["pipeline", "--install"])
    assert result.exit_code == 0, result.output
    dumped = sorted(line for line in result.output.splitlines() if line.startswith(" cookie="))
    assert dumped == sorted(golden_lines("skeleton"))


def test_missing_ovs_binaries_are_one_clear_line(tmp_path):
    env = {**os.environ, "PATH": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "plumbctl", "pipeline", "--install"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "Error: Open vSwitch not found (ovsdb-tool, ovsdb-server, ovs-vswitchd, ovs-vsctl, "
        "ovs-ofctl, ovs-appctl): apt-get install openvswitch-switch"
    ]


def test_pipeline_as_json_is_the_declaration():
    import json

    result = CliRunner().invoke(cli, ["pipeline", "-o", "json"])
    assert result.exit_code == 0
    assert [t["name"] for t in json.loads(result.output)] == list(TABLES)
