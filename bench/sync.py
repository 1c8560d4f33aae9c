"""`python -m bench sync`: the agent's initial sync of a large cluster from a fake API server.

The fake API server (`lab.fakeapi`) runs in a child process, so that this process holds only
what the agent would: the Kubernetes client, the source and the store. It serves realistic
objects (pods with managedFields, volumes and statuses; nodes with image lists). Timing starts
when the source starts and ends when every stream has listed ("synced"). Peak RSS is this
process's high-water mark (VmHWM), imports included.

Targets (issue 5): 10,000 pods in 1,000 namespaces synced in <= 10 s with peak RSS <= 300 MB.
The exit status is 0 when both are met. The last line printed is one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from controller.config import AgentConfig
from controller.sources.kube import KubeSource
from controller.store import Store

KINDS = {"Pod": "pods", "Node": "nodes", "Namespace": "namespaces", "NetworkPolicy": "policies"}


def memory_mb(field: str) -> float:
    """A VmXXX figure of this process from /proc/self/status, in MB (0 when unavailable)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MB."""
    hwm = memory_mb("VmHWM")
    return hwm or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def start_fake_api(args: argparse.Namespace) -> tuple[subprocess.Popen[str], str]:
    """Run `python -m lab.fakeapi` with the cluster size asked for; returns it and its URL."""
    command = [
        sys.executable,
        "-m",
        "lab.fakeapi",
        f"--pods={args.pods}",
        f"--namespaces={args.namespaces}",
        f"--nodes={args.nodes}",
        f"--policies={args.policies}",
    ]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None
    url = server.stdout.readline().strip()
    if not url.startswith("http://"):
        server.kill()
        raise RuntimeError(f"fake API server did not start (said {url!r})")
    return server, url


def write_kubeconfig(directory: str, url: str) -> str:
    path = Path(directory) / "kubeconfig"
    path.write_text(
        "apiVersion: v1\nkind: Config\n"
        f"clusters:\n- name: bench\n  cluster:\n    server: {url}\n"
        "users:\n- name: agent\n  user:\n    token: bench\n"
        "contexts:\n- name: bench\n  context:\n    cluster: bench\n    user: agent\n"
        "current-context: bench\n"
    )
    return str(path)


def run_sync(args: argparse.Namespace, url: str, workdir: str) -> dict[str, Any]:
    """Sync once from `url`; returns the figures."""
    config = AgentConfig(
        node_name=args.node, source="kubernetes", kubeconfig=write_kubeconfig(workdir, url)
    )
    store = Store()
    source = KubeSource(config, store, page_size=args.page_size)
    rss_before = memory_mb("VmRSS")
    started = time.perf_counter()
    source.start()
    synced = source.wait_synced(timeout=args.timeout)
    seconds = time.perf_counter() - started
    figures: dict[str, Any] = {
        "synced": synced,
        "sync_seconds": round(seconds, 3),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "rss_before_sync_mb": round(rss_before, 1),
        "rss_after_sync_mb": round(memory_mb("VmRSS"), 1),
        "local_pods": len(store.pods_on_node(args.node)),
        **{key: store.count(kind) for kind, key in KINDS.items()},
    }
    source.stop()
    return figures


def table(figures: dict[str, Any], args: argparse.Namespace) -> str:
    rows = [
        (
            "cluster",
            f"{args.pods} pods, {args.namespaces} namespaces, {args.nodes} nodes, "
            f"{args.policies} policies",
        ),
        ("synced", "yes" if figures["synced"] else f"NO (gave up after {args.timeout} s)"),
        ("time to synced", f"{figures['sync_seconds']:.2f} s   (target <= {args.max_seconds} s)"),
        ("peak RSS", f"{figures['peak_rss_mb']:.1f} MB   (target <= {args.max_rss_mb} MB)"),
        (
            "RSS before / after sync",
            f"{figures['rss_before_sync_mb']:.1f} / {figures['rss_after_sync_mb']:.1f} MB",
        ),
        ("store", ", ".join(f"{figures[key]} {kind}" for kind, key in KINDS.items())),
        (f"pods on {args.node}", str(figures["local_pods"])),
        ("result", "PASS" if figures["ok"] else "FAIL"),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench sync", description=__doc__)
    parser.add_argument("--pods", type=int, default=10_000)
    parser.add_argument("--namespaces", type=int, default=1_000)
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--policies", type=int, default=1_000)
    parser.add_argument("--node", default="node-0000", help="the node the agent runs on")
    parser.add_argument("--page-size", type=int, default=500)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--max-seconds", type=float, default=10.0)
    parser.add_argument("--max-rss-mb", type=float, default=300.0)
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    server, url = start_fake_api(args)
    try:
        with tempfile.TemporaryDirectory(prefix="plumb-bench-sync-") as workdir:
            figures = run_sync(args, url, workdir)
    finally:
        server.terminate()
        server.wait(10)
    figures["ok"] = bool(
        figures["synced"]
        and figures["sync_seconds"] <= args.max_seconds
        and figures["peak_rss_mb"] <= args.max_rss_mb
        and figures["pods"] == args.pods
    )
    figures.update({"targets": {"sync_seconds": args.max_seconds, "peak_rss_mb": args.max_rss_mb}})
    print(table(figures, args))
    print(json.dumps({"benchmark": "sync", **figures}))
    return 0 if figures["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
