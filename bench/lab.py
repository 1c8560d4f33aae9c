"""`python -m bench lab`: how long the lab takes a user. Wall-clock time of `plumbctl lab up`
with 3 nodes (namespaces, underlay, three OVS instances, three agents until /readyz says ready),
of `plumbctl lab apply` starting 50 pods (netns, the real CNI executable, the pod's server, status
written back), of a full matrix over those pods, and of `plumbctl lab down`.

Each step is the real command line run as a user runs it, so the figures include Python's start
(about 0.3 s per command). The lab gets a random name and is taken down at the end, whatever
happens.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def pods_yaml(count: int) -> str:
    docs = [
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": f"p{i}", "namespace": "bench", "labels": {"app": "bench"}},
                "spec": {
                    "containers": [{"name": "c", "image": "none", "ports": [{"containerPort": 80}]}]
                },
            }
        )
        for i in range(count)
    ]
    return "\n---\n".join(docs)


def timed(name: str, *args: str) -> float:
    """Seconds one `plumbctl lab` command took; raises with its output if it failed."""
    cmd = [sys.executable, "-m", "plumbctl", "lab", *args, "--name", name]
    start = time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600, check=False)
    elapsed = time.monotonic() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{done.stdout}{done.stderr}")
    return elapsed


def run(nodes: int, pods: int) -> dict[str, float | int]:
    name = f"bench-{uuid.uuid4().hex[:6]}"
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(pods_yaml(pods))
    try:
        up = timed(name, "up", "--nodes", str(nodes))
        apply = timed(name, "apply", "-f", f.name)
        matrix = timed(name, "matrix", "--ports", "80", "--json")
        down = timed(name, "down")
    finally:
        subprocess.run(
            [sys.executable, "-m", "plumbctl", "lab", "down", "--name", name],
            capture_output=True, cwd=REPO, check=False,
        )  # fmt: skip
        os.unlink(f.name)
    return {"nodes": nodes, "pods": pods, "up_s": up, "apply_s": apply, "matrix_s": matrix,
            "down_s": down, "probes": pods * pods}  # fmt: skip


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench lab", description=__doc__)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--pods", type=int, default=50)
    args = parser.parse_args(list(argv))
    if os.geteuid() != 0:
        print("bench lab needs root (namespaces, OVS)", flush=True)
        return 2
    r = run(args.nodes, args.pods)
    print(f"lab up, {r['nodes']} nodes (until every agent is ready)  {r['up_s']:6.2f} s")
    print(f"lab apply, {r['pods']} pods (each running, IP written back) {r['apply_s']:6.2f} s")
    print(f"lab matrix, {r['probes']} probes (TCP/80)                {r['matrix_s']:6.2f} s")
    print(f"lab down                                       {r['down_s']:6.2f} s")
    print(json.dumps(r))
    return 0
