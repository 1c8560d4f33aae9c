"""`python -m bench reliability SCENARIO`: Plumb under faults (issue 7), one scenario per run,
each on a lab of its own with pods and NetworkPolicies whose verdicts are known, printing its
figures and, as its last line, one JSON object. The tests in tests/reliability run the same
scenario functions with smaller numbers and assert on the figures; docs/reliability.md records
them.

Traffic is watched by *lanes*: one thread per (source pod, destination pod, protocol) that has
entered the source pod's network namespace and probes back to back, each probe a new TCP
connection or an ICMP echo with a new identifier (so each is a new conntrack entry and crosses
the policy tables), one attempt, one timeout. A lane whose verdict is "allowed" must never fail;
one whose verdict is "denied" must never connect.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import socket
import statistics
import struct
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cni import executable
from cni.netns import enter_netns
from flows.cookie import Cookie
from flows.policy import EPOCH_PRIORITY
from lab import apply as lab_apply
from lab import cluster, faults, host, pods
from lab.layout import HEALTH_PORT, LabLayout, NodeLayout
from lab.objects import ManifestsDir, normalized

Progress = Callable[[str], None]
NAMESPACE = "rel"
PROBE_TIMEOUT = 1.0  # one SYN or echo lost costs Linux a 1 s retransmission: a failure
PROBE_INTERVAL = 0.1
CONVERGE_TIMEOUT = 20.0


def _quiet(_: str) -> None:
    pass


def say(message: str) -> None:
    print(message, flush=True)


# --- the world: a lab with pods and policies whose verdicts are known --------------------------

# (name, node, labels): clients and servers on both nodes; every pod serves TCP 80.
PODS: tuple[tuple[str, str, dict[str, str]], ...] = (
    ("client", "node1", {"app": "client"}),
    ("local-web", "node1", {"app": "web"}),
    ("web", "node2", {"app": "web"}),
    ("db", "node2", {"app": "db"}),
    ("peer", "node2", {"app": "client", "role": "peer"}),
)


def _policy(name: str, selector: dict[str, str], spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"podSelector": {"matchLabels": selector}, **spec},
    }


CLIENTS = {"podSelector": {"matchLabels": {"app": "client"}}}
POLICIES: tuple[dict[str, Any], ...] = (
    # web (both nodes) takes anything, ICMP included, from clients only.
    _policy("web-from-clients", {"app": "web"}, {"ingress": [{"from": [CLIENTS]}]}),
    # db takes nothing.
    _policy("db-isolated", {"app": "db"}, {"policyTypes": ["Ingress"]}),
    # peer may talk to web pods only.
    _policy(
        "peer-to-web",
        {"role": "peer"},
        {
            "policyTypes": ["Egress"],
            "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "web"}}}]}],
        },
    ),
)
# (source, destination, allowed): cross-node and same-node, both directions, through ingress
# and egress policies.
VERDICTS: tuple[tuple[str, str, bool], ...] = (
    ("client", "web", True),  # node1 -> node2, web's ingress allows clients
    ("client", "local-web", True),  # same node, same policy
    ("web", "client", True),  # node2 -> node1, nothing isolates client
    ("peer", "web", True),  # same node, peer's egress and web's ingress allow
    ("peer", "local-web", True),  # node2 -> node1 through both
    ("client", "db", False),  # db is isolated
    ("web", "db", False),
    ("peer", "client", False),  # peer's egress allows web only
)
PROTOCOLS = ("TCP", "ICMP")


def pod_object(name: str, node: str, labels: dict[str, str]) -> dict[str, Any]:
    """One pod of the world as the lab applies it: it serves TCP 80."""
    container = {"name": "c", "image": "none", "ports": [{"containerPort": 80}]}
    return normalized(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": NAMESPACE, "labels": dict(labels)},
            "spec": {"nodeName": node, "containers": [container]},
        },
        "bench.reliability",
    )


def pod_objects() -> list[dict[str, Any]]:
    """The world's pods."""
    return [pod_object(name, node, labels) for name, node, labels in PODS]


@dataclass
class World:
    """A running lab holding the world's pods and policies."""

    layout: LabLayout
    progress: Progress = _quiet

    def node(self, name: str) -> NodeLayout:
        return self.layout.node_by_name(name)

    def pod(self, name: str, namespace: str = NAMESPACE) -> pods.PodRecord:
        rec = pods.record(self.layout, namespace, name)
        if rec is None or not rec.ip:
            raise RuntimeError(f"pod {namespace}/{name} has no IP in lab {self.layout.name}")
        return rec

    def lanes(self, protocols: Sequence[str] = PROTOCOLS) -> list[Lane]:
        return [
            Lane(self.pod(src), self.pod(dst), proto, allowed)
            for src, dst, allowed in VERDICTS
            for proto in protocols
        ]

    def apply(self, objects: Sequence[dict[str, Any]]) -> None:
        outcome = lab_apply.apply(self.layout, objects, self.progress)
        if outcome.errors:
            raise RuntimeError("; ".join(outcome.errors))

    def delete(self, objects: Sequence[dict[str, Any]]) -> None:
        outcome = lab_apply.delete(self.layout, objects, self.progress)
        if outcome.errors:
            raise RuntimeError("; ".join(outcome.errors))


def lab_name(prefix: str = "rel") -> str:
    """A fresh lab name, never the default `plumb`."""
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


@contextlib.contextmanager
def world(
    nodes: int = 2,
    encap: str = "geneve",
    progress: Progress = _quiet,
    name: str | None = None,
    populated: bool = True,
) -> Iterator[World]:
    """A lab of its own with the world's pods and policies, converged; taken down afterwards,
    whatever happens."""
    layout = LabLayout(name or lab_name())
    try:
        cluster.up(layout.name, nodes, encap, progress=progress)
        w = World(layout, progress)
        if populated:
            w.apply([*pod_objects(), *(normalized(dict(p), "bench") for p in POLICIES)])
            converge(w.lanes())
        yield w
    finally:
        cluster.down(layout.name)


def converge(lanes: Sequence[Lane], timeout: float = CONVERGE_TIMEOUT) -> None:
    """Wait until every lane gives its verdict (agents learn remote pods' addresses from the
    manifests they poll); RuntimeError naming the lanes that never did."""
    deadline = time.monotonic() + timeout
    wrong = list(lanes)
    while wrong:
        wrong = [lane for lane in wrong if lane.probe_once(0.5)[0] != lane.allowed]
        if wrong and time.monotonic() > deadline:
            raise RuntimeError(f"verdicts not reached within {timeout:g}s: {wrong}")


# --- traffic: lanes of back-to-back probes ----------------------------------------------------


@dataclass
class Lane:
    """Probes from one pod to another over one protocol, with the verdict they must give."""

    src: pods.PodRecord
    dst: pods.PodRecord
    protocol: str  # TCP (port 80) or ICMP
    allowed: bool
    results: list[tuple[float, float, bool]] = field(default_factory=list)  # start, end, ok
    failure_reasons: Counter[str] = field(default_factory=Counter)  # why probes did not connect
    _ident: int = field(default_factory=lambda: int.from_bytes(os.urandom(2), "big"))

    def __repr__(self) -> str:
        verdict = "allowed" if self.allowed else "denied"
        return f"{self.src.name}->{self.dst.name}/{self.protocol}({verdict})"

    @property
    def cross_node(self) -> bool:
        return self.src.node != self.dst.node

    def fresh(self) -> Lane:
        """The same lane with no results (for a second prober alongside this one)."""
        return Lane(self.src, self.dst, self.protocol, self.allowed)

    def probe_once(self, timeout: float = PROBE_TIMEOUT) -> tuple[bool, str]:
        """One probe from inside the source pod (by a thread that enters it)."""
        box: list[tuple[bool, str]] = []
        thread = threading.Thread(target=lambda: box.append(self._in_pod(timeout)))
        thread.start()
        thread.join()
        return box[0]

    def _in_pod(self, timeout: float) -> tuple[bool, str]:
        enter_netns(host.netns_path(self.src.netns))
        return self.probe_here(timeout)

    def probe_here(self, timeout: float) -> tuple[bool, str]:
        """One probe from the calling thread, which has entered the source pod."""
        if self.protocol == "TCP":
            return _tcp_probe(self.dst.ip, 80, timeout)
        self._ident = (self._ident + 1) & 0xFFFF
        return _icmp_probe(self.dst.ip, self._ident, timeout)

    def run(self, stop: threading.Event, interval: float, timeout: float) -> None:
        """Probe back to back until `stop`; the calling thread enters the source pod."""
        enter_netns(host.netns_path(self.src.netns))
        while not stop.is_set():
            start = time.monotonic()
            ok, reason = self.probe_here(timeout)
            self.results.append((start, time.monotonic(), ok))
            if not ok:
                self.failure_reasons[reason] += 1
            stop.wait(interval)

    def failures(self) -> int:
        """Probes that gave the wrong verdict."""
        return sum(ok != self.allowed for _, _, ok in self.results)

    def longest_outage(self) -> float:
        """Seconds from the start of the first failed probe of a run of failures to the end of
        the next successful one (to the end of the last probe if none came)."""
        longest, began = 0.0, None
        for start, end, ok in self.results:
            if not ok and began is None:
                began = start
            elif ok and began is not None:
                longest, began = max(longest, end - began), None
        if began is not None and self.results:
            longest = max(longest, self.results[-1][1] - began)
        return longest


def _tcp_probe(ip: str, port: int, timeout: float) -> tuple[bool, str]:
    """One connection attempt: a single SYN and Linux's own retransmission after 1 s."""
    try:
        with socket.create_connection((ip, port), timeout=timeout):
            return True, ""
    except TimeoutError:
        return False, "timeout"
    except OSError as exc:
        return False, exc.strerror or str(exc)


def _icmp_checksum(data: bytes) -> int:
    data += b"\0" * (len(data) % 2)
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    return int(~(total + (total >> 16)) & 0xFFFF)


def _icmp_probe(ip: str, ident: int, timeout: float) -> tuple[bool, str]:
    """One ICMP echo with identifier `ident`; True when its reply came back in time.

    A raw socket sees every ICMP message the pod receives, the replies to its other lanes'
    probes included, so a reply counts only if it comes from `ip` with this identifier."""
    body = struct.pack("!HH", ident, 1) + b"plumb-reliability"
    packet = struct.pack("!BBH", 8, 0, _icmp_checksum(b"\x08\0\0\0" + body)) + body
    deadline = time.monotonic() + timeout
    want_source = socket.inet_aton(ip)
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as sock:
        try:
            sock.sendto(packet, (ip, 0))
            while (left := deadline - time.monotonic()) > 0:
                sock.settimeout(left)
                reply = sock.recv(2048)
                if _is_echo_reply(reply, want_source, ident):
                    return True, ""
        except TimeoutError:
            pass
        except OSError as exc:  # e.g. EHOSTUNREACH once neighbour resolution gave up
            return False, exc.strerror or str(exc)
    return False, "timeout"


def _is_echo_reply(reply: bytes, source: bytes, ident: int) -> bool:
    """Whether an IPv4 datagram (as a raw socket returns it) is an echo reply from `source`
    with identifier `ident`."""
    header = reply[(reply[0] & 0x0F) * 4 :]
    return (
        reply[12:16] == source
        and len(header) >= 6
        and header[0] == 0
        and struct.unpack("!H", header[4:6])[0] == ident
    )


@dataclass
class TrafficFigures:
    """What the lanes saw."""

    allowed_probes: int
    failed: int  # allowed probes that did not connect
    max_outage_ms: float
    max_latency_ms: float  # the slowest allowed probe that connected
    denied_probes: int
    leaked: int  # denied probes that connected
    failing_lanes: list[str]
    failure_reasons: dict[str, int]  # of the allowed probes that failed: why

    def to_json(self) -> dict[str, object]:
        return {
            "allowed_probes": self.allowed_probes,
            "failed": self.failed,
            "max_outage_ms": round(self.max_outage_ms, 1),
            "max_latency_ms": round(self.max_latency_ms, 1),
            "denied_probes": self.denied_probes,
            "leaked": self.leaked,
            "failing_lanes": self.failing_lanes,
            "failure_reasons": self.failure_reasons,
        }


class Traffic:
    """Every lane probing in a thread of its own until `stop`."""

    def __init__(
        self,
        lanes: Sequence[Lane],
        interval: float = PROBE_INTERVAL,
        timeout: float = PROBE_TIMEOUT,
    ) -> None:
        self.lanes = list(lanes)
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=lane.run, args=(self._stop, interval, timeout), daemon=True)
            for lane in self.lanes
        ]

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> TrafficFigures:
        self._stop.set()
        for thread in self._threads:
            thread.join()
        return self.figures()

    def figures(self) -> TrafficFigures:
        allowed = [lane for lane in self.lanes if lane.allowed]
        denied = [lane for lane in self.lanes if not lane.allowed]
        return TrafficFigures(
            allowed_probes=sum(len(lane.results) for lane in allowed),
            failed=sum(lane.failures() for lane in allowed),
            max_outage_ms=max((lane.longest_outage() for lane in allowed), default=0.0) * 1000,
            max_latency_ms=max(
                (end - start for lane in allowed for start, end, ok in lane.results if ok),
                default=0.0,
            )
            * 1000,
            denied_probes=sum(len(lane.results) for lane in denied),
            leaked=sum(lane.failures() for lane in denied),
            failing_lanes=[repr(lane) for lane in self.lanes if lane.failures()],
            failure_reasons=dict(sum((lane.failure_reasons for lane in allowed), Counter())),
        )

    def first_success_after(self, moment: float) -> float | None:
        """Seconds from `moment` until every allowed lane has had a successful probe that
        started after it (None if one never did)."""
        latest = 0.0
        for lane in self.lanes:
            if not lane.allowed:
                continue
            ends = [end for start, end, ok in lane.results if ok and start >= moment]
            if not ends:
                return None
            latest = max(latest, ends[0] - moment)
        return latest


def recovery(lanes: Sequence[Lane], since: float, timeout: float = 10.0) -> float | None:
    """Seconds from `since` until every allowed lane has connected once, probing each with
    0.2 s attempts in parallel (None if one did not within `timeout`)."""
    allowed = [lane.fresh() for lane in lanes if lane.allowed]
    done: list[float] = []

    def one(lane: Lane) -> None:
        enter_netns(host.netns_path(lane.src.netns))
        while time.monotonic() - since < timeout:
            if lane.probe_here(0.2)[0]:
                done.append(time.monotonic() - since)
                return
            time.sleep(0.01)

    threads = [threading.Thread(target=one, args=(lane,), daemon=True) for lane in allowed]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return max(done) if len(done) == len(allowed) else None


# --- what a node holds: flows by round, ports, metrics -----------------------------------------


def dump_flows(node: NodeLayout) -> list[str]:
    """The bridge's flows as `ovs-ofctl` prints them (through its management socket)."""
    mgmt = node.ovs_rundir / "br-int.mgmt"
    out = host.run(["ovs-ofctl", "-O", "OpenFlow15", "--no-stats", "dump-flows", str(mgmt)])
    return [line for line in out.splitlines() if "cookie=" in line]


def standing_flows(node: NodeLayout) -> set[str]:
    """The bridge's flows but the revalidation epoch's (`flows.policy.epoch_flows`), which move
    with every policy bundle by design, a pod's coming or going included."""
    return {line for line in dump_flows(node) if not _EPOCH_FLOW.search(line)}


_EPOCH_FLOW = re.compile(rf"priority={EPOCH_PRIORITY},.*\bct_mark=")


def flow_rounds(node: NodeLayout) -> Counter[int]:
    """How many flows of each restart round the bridge holds."""
    rounds: Counter[int] = Counter()
    for line in dump_flows(node):
        cookie = int(re.search(r"cookie=(0x[0-9a-f]+)", line).group(1), 16)  # type: ignore[union-attr]
        rounds[Cookie.decode(cookie).round] += 1
    return rounds


def bridge_round(node: NodeLayout) -> int:
    """The round the agent persisted on the bridge (external_ids plumb.round)."""
    ovs = cluster.node_ovs(node)
    value = ovs.vsctl("--if-exists", "get", "Bridge", "br-int", "external_ids:plumb.round")
    return int(value.strip().strip('"') or 0)


def bridge_ports(node: NodeLayout) -> list[str]:
    """br-int's port names, repeats kept (a duplicate port would show twice)."""
    out = cluster.node_ovs(node).vsctl("--format=json", "--columns=name", "list", "Port")
    rows = json.loads(out)["data"]
    return sorted(row[0] for row in rows)


def agent_metrics(node: NodeLayout) -> dict[str, float]:
    """The agent's /metrics, samples by their full name with labels."""
    sock = host.socket_in(node.netns, socket.AF_INET, socket.SOCK_STREAM)
    with sock:
        sock.settimeout(5)
        sock.connect(("127.0.0.1", HEALTH_PORT))
        sock.sendall(b"GET /metrics HTTP/1.0\r\nHost: plumb\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    samples: dict[str, float] = {}
    for line in data.decode().split("\r\n\r\n", 1)[-1].splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                samples[name] = float(value)
    return samples


def flow_mods(node: NodeLayout) -> int:
    """Flow operations the agent has committed (add + modify + delete)."""
    m = agent_metrics(node)
    return int(sum(v for k, v in m.items() if k.startswith("plumb_agent_flow_operations_total")))


def agent_rss(node: NodeLayout) -> int:
    """The agent's resident memory in bytes (from /proc, by its recorded PID)."""
    pid = cluster.agent_pid(node)
    if pid is None:
        raise RuntimeError(f"{node.name}: no agent")
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{node.name}: no VmRSS for pid {pid}")


# --- scenario: no fault (the lanes' own noise floor) -------------------------------------------


def baseline(seconds: float = 30.0, progress: Progress = _quiet) -> dict[str, Any]:
    """The lanes with nothing happening: what a scenario's figures are to be compared with."""
    with world(progress=progress) as w, Traffic(w.lanes()) as traffic:
        time.sleep(seconds)
    return {"scenario": "baseline", "seconds": seconds, **traffic.stop().to_json()}


# --- scenario: agent restart ------------------------------------------------------------------


def agent_restart(
    runs: int = 10, node: str = "node2", kill: str = "alternate", progress: Progress = _quiet
) -> dict[str, Any]:
    """Restart one agent `runs` times while every lane probes; then no flow of an older round
    may remain on its bridge. `kill`: "never" (SIGTERM), "always" (SIGKILL, a crash) or
    "alternate" (every other restart is a crash)."""
    with world(progress=progress) as w:
        target = w.node(node)
        away: list[float] = []
        with Traffic(w.lanes()) as traffic:
            time.sleep(1.0)
            for i in range(runs):
                hard = kill == "always" or (kill == "alternate" and i % 2 == 1)
                done = faults.restart(w.layout, node, "agent", hard=hard)
                away.append(done.away_s)
                progress(f"restart {i + 1}/{runs} ({done.signal}): agent away {done.away_s:.2f}s")
                time.sleep(0.5)
            time.sleep(1.0)
        figures = traffic.figures()
        rounds = flow_rounds(target)
        current = bridge_round(target)
    return {
        "scenario": "agent-restart",
        "runs": runs,
        "kill": kill,
        "agent_away_s_max": round(max(away), 3),
        "agent_away_s_median": round(statistics.median(away), 3),
        **figures.to_json(),
        "round": current,
        "flows_of_current_round": rounds[current],
        "flows_of_older_rounds": sum(n for r, n in rounds.items() if r != current),
    }


# --- scenario: ovs-vswitchd killed and restarted ----------------------------------------------


def wait_flows(node: NodeLayout, expected: set[str], timeout: float = 10.0) -> float | None:
    """Seconds until the bridge holds exactly `expected` (flows as dumped), None on timeout."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        with contextlib.suppress(host.HostError):
            if set(dump_flows(node)) == expected:
                return time.monotonic() - start
        time.sleep(0.02)
    return None


def vswitchd_restart(
    runs: int = 3, node: str = "node2", kill: bool = True, progress: Progress = _quiet
) -> dict[str, Any]:
    """Kill ovs-vswitchd (or stop it) and start it again, `runs` times, under traffic: how long
    after OVS answers again the agent has replayed every flow, and the probes recover."""
    with world(progress=progress) as w:
        target = w.node(node)
        expected = set(dump_flows(target))
        replay, recover, away = [], [], []
        with Traffic(w.lanes()) as traffic:
            time.sleep(1.0)
            for i in range(runs):
                done = faults.restart(w.layout, node, "ovs-vswitchd", hard=kill)
                answered = time.monotonic()  # the restart returns once vswitchd answers
                replay.append(wait_flows(target, expected))
                recover.append(recovery(w.lanes(), answered))
                away.append(done.away_s)
                progress(
                    f"restart {i + 1}/{runs}: replayed in {replay[-1]}s, probes {recover[-1]}s"
                )
                time.sleep(1.0)
        figures = traffic.figures()
        new_pod_s = churn_pod(w, node)
    return {
        "scenario": "vswitchd-restart",
        "runs": runs,
        "signal": "SIGKILL" if kill else "SIGTERM",
        "vswitchd_away_s_max": round(max(away), 3),
        "replay_after_answer_s_max": _worst(replay),
        "probes_recovered_after_answer_s_max": _worst(recover),
        "outage_ms_max": round(figures.max_outage_ms, 1),
        "failed_probes": figures.failed,
        "allowed_probes": figures.allowed_probes,
        "leaked": figures.leaked,
        "new_pod_after_restarts_s": round(new_pod_s, 3),
    }


def _worst(values: Sequence[float | None]) -> float | None:
    """The largest value, None (never happened) if any is None."""
    if any(v is None for v in values):
        return None
    return round(max(v for v in values if v is not None), 3)


def churn_pod(w: World, node: str, name: str = "extra") -> float:
    """Create a web pod on `node`, check a client reaches it, delete it; seconds the create
    took (a CNI ADD needs the agent's OVSDB connection, its OpenFlow connection and policies)."""
    pod = pod_object(name, node, {"app": "web"})
    started = time.monotonic()
    w.apply([pod])
    took = time.monotonic() - started
    lane = Lane(w.pod("client"), w.pod(name), "TCP", True)
    try:
        converge([lane], timeout=10)
    finally:
        w.delete([pod])
    return took


# --- scenario: ovsdb-server restarted --------------------------------------------------------


def ovsdb_restart(
    runs: int = 3, node: str = "node2", kill: bool = True, progress: Progress = _quiet
) -> dict[str, Any]:
    """Restart ovsdb-server `runs` times under traffic; after each, a pod is added to and
    removed from the node (the agent must have reconnected). No port may be doubled or lost."""
    with world(progress=progress) as w:
        target = w.node(node)
        ports_before = bridge_ports(target)
        flows_before = standing_flows(target)
        agent_before = cluster.agent_pid(target)
        adds: list[float] = []
        # 10 s probes: ovs-vswitchd polls no port of the userspace datapath that its main
        # thread serves (veths, taps) while it is without its database, so packets wait for its
        # reconnection, whose backoff doubles from 1 s to 8 s when restarts come in a row; they
        # are delayed, not lost (docs/reliability.md). The slowest probe is the disruption.
        with Traffic(w.lanes(), timeout=10.0) as traffic:
            time.sleep(1.0)
            for i in range(runs):
                done = faults.restart(w.layout, node, "ovsdb-server", hard=kill)
                adds.append(churn_pod(w, node, f"extra{i}"))
                progress(
                    f"restart {i + 1}/{runs}: away {done.away_s:.2f}s, pod add {adds[-1]:.2f}s"
                )
            time.sleep(1.0)
        figures = traffic.figures()
        ports_after = bridge_ports(target)
        flows_after = standing_flows(target)
        agent_after = cluster.agent_pid(target)
    return {
        "scenario": "ovsdb-restart",
        "runs": runs,
        "signal": "SIGKILL" if kill else "SIGTERM",
        "pod_add_after_restart_s_max": round(max(adds), 3),
        "failed_probes": figures.failed,
        "allowed_probes": figures.allowed_probes,
        "slowest_probe_ms": round(figures.max_latency_ms, 1),
        "leaked": figures.leaked,
        "failing_lanes": figures.failing_lanes,
        "failure_reasons": figures.failure_reasons,
        "ports_before": len(ports_before),
        "ports_after": len(ports_after),
        "duplicate_ports": sorted(p for p, n in Counter(ports_after).items() if n > 1),
        "ports_lost": sorted(set(ports_before) - set(ports_after)),
        "ports_left_over": sorted(set(ports_after) - set(ports_before)),
        "flows_changed": len(flows_before ^ flows_after),
        "agent_same_process": agent_before is not None and agent_before == agent_after,
    }


# --- scenario: the source goes away -----------------------------------------------------------

# Made while the source is away: db now takes clients too.
DB_OPENED = _policy("db-isolated", {"app": "db"}, {"ingress": [{"from": [CLIENTS]}]})


def source_down(outage: float = 60.0, progress: Progress = _quiet) -> dict[str, Any]:
    """Move the manifests directory away for `outage` seconds under traffic (root reads
    through chmod 000, so moving it is what makes it unreadable to the agents), change a
    policy in it meanwhile, and move it back: nothing may change while it is away, and the
    change must take effect once it is back."""
    with world(progress=progress) as w:
        manifests = w.layout.manifests_dir
        away = manifests.with_name("manifests.away")
        lanes = w.lanes()
        with Traffic(lanes) as traffic:
            time.sleep(1.0)
            manifests.rename(away)
            try:
                ManifestsDir(away).write(normalized(dict(DB_OPENED), "bench"))
                time.sleep(outage)
            finally:
                away.rename(manifests)
            back = time.monotonic()
        figures = traffic.figures()
        opened = Lane(w.pod("client"), w.pod("db"), "TCP", True)
        converge([opened], timeout=30)
        took = time.monotonic() - back
        noticed = [n for n in ("node1", "node2") if _logged(w.node(n), UNREADABLE)]
    return {
        "scenario": "source-down",
        "outage_s": outage,
        "failed_probes": figures.failed,
        "allowed_probes": figures.allowed_probes,
        "leaked_while_away": figures.leaked,
        "change_applied_after_return_s": round(took, 3),
        "agents_that_logged_the_outage": noticed,
    }


UNREADABLE = "manifests directory unreadable"


def _logged(node: NodeLayout, text: str) -> bool:
    return text in node.agent_log.read_text(errors="replace")


# --- scenario: partition ----------------------------------------------------------------------


def partition(cut: float = 5.0, node: str = "node2", progress: Progress = _quiet) -> dict[str, Any]:
    """Cut one node's underlay for `cut` seconds under traffic, then heal it: same-node lanes
    must not notice, no agent may restart or touch a flow while cut, and cross-node traffic
    must resume soon after the heal."""
    with world(progress=progress) as w:
        nodes = [w.node(n) for n in ("node1", "node2")]
        pids = {n.name: cluster.agent_pid(n) for n in nodes}
        lanes = w.lanes()
        with Traffic(lanes):
            time.sleep(1.0)
            mods = {n.name: flow_mods(n) for n in nodes}
            faults.partition(w.layout, node)
            time.sleep(cut)
            churn = {n.name: flow_mods(n) - mods[n.name] for n in nodes}
            faults.heal(w.layout, node)
            healed = time.monotonic()
            resumed = recovery([lane for lane in lanes if lane.cross_node], healed)
            time.sleep(1.0)
        local = [lane for lane in lanes if not lane.cross_node]
        crossing = [lane for lane in lanes if lane.cross_node]
        same_pids = all(cluster.agent_pid(n) == pids[n.name] for n in nodes)
    return {
        "scenario": "partition",
        "cut_s": cut,
        "cross_node_failed_while_cut": sum(lane.failures() for lane in crossing if lane.allowed),
        "same_node_failed": sum(lane.failures() for lane in local),
        "leaked": sum(lane.failures() for lane in lanes if not lane.allowed),
        "flow_mods_while_cut": churn,
        "resumed_after_heal_s": None if resumed is None else round(resumed, 3),
        "agents_same_process": same_pids,
    }


# --- scenario: security -----------------------------------------------------------------------


def socket_mode(path: Path) -> tuple[str, int]:
    """(permission bits in octal, owner uid) of the CNI socket."""
    st = path.stat()
    return oct(st.st_mode & 0o777), st.st_uid


def agent_sockets(node: NodeLayout) -> list[str]:
    """The agent's listening TCP and bound UDP sockets, as `tcp 127.0.0.1:9641`, read from
    /proc/net/{tcp,tcp6,udp,udp6} of the node's namespace and matched to the agent's file
    descriptors by inode (so other processes' sockets never count)."""
    pid = cluster.agent_pid(node)
    if pid is None:
        raise RuntimeError(f"{node.name}: no agent")
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            if (target := os.readlink(fd)).startswith("socket:["):
                inodes.add(target[8:-1])
    found = []
    for proto in ("tcp", "tcp6", "udp", "udp6"):
        lines = Path(f"/proc/{pid}/net/{proto}").read_text().splitlines()[1:]
        for line in lines:
            cols = line.split()
            listening = cols[3] == "0A" if proto.startswith("tcp") else True
            if cols[9] in inodes and listening:
                found.append(f"{proto} {_proc_address(cols[1])}")
    return sorted(found)


def _proc_address(text: str) -> str:
    """/proc/net/tcp's `0100007F:25D1` as `127.0.0.1:9681` (IPv4; IPv6 left in hex)."""
    address, port = text.split(":")
    if len(address) == 8:
        address = socket.inet_ntoa(struct.pack("<I", int(address, 16)))
    return f"{address}:{int(port, 16)}"


def _mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def _ip_checksum(header: bytes) -> int:
    total = sum(struct.unpack("!10H", header))
    total = (total >> 16) + (total & 0xFFFF)
    return int(~(total + (total >> 16)) & 0xFFFF)


def icmp_packet(src: str, dst: str, marker: bytes) -> bytes:
    """An IPv4 ICMP echo request carrying `marker`."""
    body = struct.pack("!HH", 0x5042, 1) + marker
    icmp = struct.pack("!BBH", 8, 0, _icmp_checksum(b"\x08\0\0\0" + body)) + body
    fields = [0x45, 0, 20 + len(icmp), 0, 0x4000, 64, 1, 0]
    header = struct.pack("!BBHHHBBH4s4s", *fields, socket.inet_aton(src), socket.inet_aton(dst))
    header = header[:10] + struct.pack("!H", _ip_checksum(header)) + header[12:]
    return header + icmp


def ether(dst: str, src: str, ethertype: int, payload: bytes) -> bytes:
    return _mac(dst) + _mac(src) + struct.pack("!H", ethertype) + payload


def arp_reply(sender_mac: str, claimed_ip: str, target_ip: str, trailer: bytes) -> bytes:
    """A broadcast ARP reply saying `claimed_ip` is at `sender_mac`; `trailer` rides in the
    frame's padding so a capture can recognise it."""
    arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 2)
    arp += _mac(sender_mac) + socket.inet_aton(claimed_ip)
    arp += _mac("ff:ff:ff:ff:ff:ff") + socket.inet_aton(target_ip)
    return ether("ff:ff:ff:ff:ff:ff", sender_mac, 0x0806, arp + trailer)


def geneve(inner: bytes) -> bytes:
    """A Geneve header (no options, VNI 0) carrying an Ethernet frame."""
    return struct.pack("!BBHI", 0, 0, 0x6558, 0) + inner


class Capture:
    """Counts frames seen on a namespace's `ifname` that carry a marker, while open."""

    def __init__(self, netns: str, ifname: str, marker: bytes) -> None:
        self.netns, self.ifname, self.marker = netns, ifname, marker
        self.seen = 0
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Capture:
        self._thread.start()
        self._ready.wait(5)
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(0.3)  # let what was sent arrive
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        enter_netns(host.netns_path(self.netns))
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003)) as sock:
            sock.bind((self.ifname, 0))
            sock.settimeout(0.05)
            self._ready.set()
            while not self._stop.is_set():
                with contextlib.suppress(TimeoutError):
                    frame, address = sock.recvfrom(65535)
                    # Arrivals only: an echo reply going out carries the marker too.
                    if address[2] != socket.PACKET_OUTGOING and self.marker in frame:
                        self.seen += 1


def send_frames(netns: str, ifname: str, frames: Sequence[bytes]) -> None:
    """Send raw Ethernet frames out of `ifname` in `netns`."""

    def send() -> None:
        enter_netns(host.netns_path(netns))
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as sock:
            sock.bind((ifname, 0))
            for frame in frames:
                sock.send(frame)
                time.sleep(0.01)

    thread = threading.Thread(target=send)
    thread.start()
    thread.join()


def send_udp(netns: str, src: str, dst: str, port: int, payloads: Sequence[bytes]) -> None:
    """UDP datagrams from `src` (an address of `netns`) to `dst:port`."""

    def send() -> None:
        enter_netns(host.netns_path(netns))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((src, 0))
            for payload in payloads:
                sock.sendto(payload, (dst, port))
                time.sleep(0.01)

    thread = threading.Thread(target=send)
    thread.start()
    thread.join()


def link_mac(netns: str, ifname: str) -> str:
    out = host.run(["ip", "-n", netns, "-j", "link", "show", ifname])
    return str(json.loads(out)[0]["address"])


def delivered(w: World, to: str, send: Callable[[bytes], None], copies: int = 3) -> int:
    """How many frames carrying a fresh marker reach pod `to` when `send(marker)` runs."""
    marker = os.urandom(12)
    with Capture(w.pod(to).netns, "eth0", marker) as capture:
        send(marker)
    return capture.seen


def pod_spoofing(w: World) -> dict[str, int]:
    """Frames sent by hand from pod client (node1) towards pod web (node2): honest, with a
    forged source IP (local-web's, whom web admits), with a forged MAC; and broadcast ARP
    replies, honest and claiming web's address. How many arrived where."""
    client, web, neighbour = w.pod("client"), w.pod("web"), w.pod("local-web")
    mac = link_mac(client.netns, "eth0")
    gateway = link_mac(w.node("node1").netns, "plumb-gw0")

    def icmp(src_mac: str, src_ip: str) -> Callable[[bytes], None]:
        def send(marker: bytes) -> None:
            frame = ether(gateway, src_mac, 0x0800, icmp_packet(src_ip, web.ip, marker))
            send_frames(client.netns, "eth0", [frame] * 3)

        return send

    def arp(claimed_ip: str) -> Callable[[bytes], None]:
        def send(marker: bytes) -> None:
            frame = arp_reply(mac, claimed_ip, neighbour.ip, marker)
            send_frames(client.netns, "eth0", [frame] * 3)

        return send

    return {
        "honest_delivered": delivered(w, "web", icmp(mac, client.ip)),
        "forged_ip_delivered": delivered(w, "web", icmp(mac, neighbour.ip)),
        "forged_mac_delivered": delivered(w, "web", icmp("0a:58:de:ad:be:ef", client.ip)),
        "honest_arp_seen_by_neighbour": delivered(w, "local-web", arp(client.ip)),
        "forged_arp_seen_by_neighbour": delivered(w, "local-web", arp(web.ip)),
        "forged_arp_seen_on_node2": delivered(w, "peer", arp(web.ip)),
    }


GENEVE_PORT = 6081
ROGUE_ADDRESS = "172.30.0.99"


def underlay_injection(w: World) -> dict[str, int]:
    """Geneve packets to node2 carrying an ICMP echo that claims to come from pod client (whom
    web's policy admits): sent from node1's own tunnel address (a known node), and from a
    stranger on the underlay. How many reached web."""
    client, web = w.pod("client"), w.pod("web")
    node1, node2 = w.node("node1"), w.node("node2")
    inner_dst = link_mac(node2.netns, "plumb-gw0")

    def from_(netns: str, src: str) -> Callable[[bytes], None]:
        def send(marker: bytes) -> None:
            frame = ether(
                inner_dst, "aa:bb:cc:dd:ee:ff", 0x0800, icmp_packet(client.ip, web.ip, marker)
            )
            send_udp(netns, src, node2.address, GENEVE_PORT, [geneve(frame)] * 3)

        return send

    underlay = w.layout.underlay_netns
    bridge = w.layout.underlay_bridge
    host.run(["ip", "-n", underlay, "addr", "add", f"{ROGUE_ADDRESS}/24", "dev", bridge])
    try:
        rogue = delivered(w, "web", from_(underlay, ROGUE_ADDRESS))
    finally:
        host.run(["ip", "-n", underlay, "addr", "del", f"{ROGUE_ADDRESS}/24", "dev", bridge])
    return {
        "from_known_node_delivered": delivered(w, "web", from_(node1.netns, node1.address)),
        "from_stranger_delivered": rogue,
    }


def security(progress: Progress = _quiet) -> dict[str, Any]:
    """The CNI socket's mode, the agent's sockets, pod spoofing across nodes, and Geneve
    injected on the underlay."""
    with world(progress=progress) as w:
        node = w.node("node1")
        mode, uid = socket_mode(node.cni_socket)
        return {
            "scenario": "security",
            "cni_socket_mode": mode,
            "cni_socket_uid": uid,
            "agent_sockets": agent_sockets(node),
            **pod_spoofing(w),
            **underlay_injection(w),
        }


# --- scenario: the CNI executable fuzzed ------------------------------------------------------

CNI_PATH = ":".join(pods.CNI_BIN_DIRS)
COMMANDS = ("ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION")
CNI_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
# The pods fuzzed calls name; their objects are in the manifests before the calls start.
FUZZ_NAMESPACES = ("fz", "kube-system")
FUZZ_PODS = tuple(f"fuzz-{i}" for i in range(10))
# Variables the executable forwards, and its own knobs; everything else it ignores.
CNI_VARS = ("CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS", "CNI_PATH")


@dataclass(frozen=True)
class CniCase:
    """One call of the executable: its environment (None: unset) and stdin."""

    env: dict[str, bytes | None]
    stdin: bytes

    @property
    def command(self) -> bytes | None:
        return self.env.get("CNI_COMMAND")

    def with_command(self, command: str) -> CniCase:
        return CniCase({**self.env, "CNI_COMMAND": command.encode()}, self.stdin)

    def environ(self, socket_path: Path) -> dict[bytes, bytes]:
        env = {b"PATH": os.environ.get("PATH", "/usr/bin:/bin").encode()}
        env[b"PLUMB_CNI_SOCKET"] = str(socket_path).encode()
        for key, value in self.env.items():
            if value is not None:
                env[key.encode()] = value
        return env


@dataclass(frozen=True)
class CniAnswer:
    exit_code: int
    stdout: bytes
    stderr: bytes
    seconds: float


def call_plumb(case: CniCase, socket_path: Path, timeout: float = 60.0) -> CniAnswer:
    """Run the real executable as a runtime would: the environment is its whole environment."""
    started = time.monotonic()
    done = subprocess.run(
        [str(executable.path())],
        input=case.stdin,
        env=case.environ(socket_path),
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    return CniAnswer(done.returncode, done.stdout, done.stderr, time.monotonic() - started)


TRACEBACK = b"Traceback (most recent call last)"


def output_problem(case: CniCase, answer: CniAnswer) -> str | None:
    """What is wrong with an answer, None when it is a valid CNI answer: exit 0 with nothing
    or one JSON object on stdout; exit 1 with one CNI error object (int code, str msg); never
    a traceback on either stream."""
    # Error messages quote their input: a marker the caller sent is no traceback of ours.
    sent = case.stdin + b"".join(v for v in case.env.values() if v is not None)
    for stream in (answer.stdout, answer.stderr):
        if TRACEBACK in stream and TRACEBACK not in sent:
            return "a traceback"
    text = answer.stdout.strip()
    if answer.exit_code == 0:
        if not text:
            return None
        try:
            return None if isinstance(json.loads(text), dict) else "stdout is not an object"
        except ValueError:
            return f"exit 0 with stdout that is not JSON: {text[:80]!r}"
    if answer.exit_code != 1:
        return f"exit code {answer.exit_code}"
    try:
        error = json.loads(text)
    except ValueError:
        return f"exit 1 with stdout that is not JSON: {text[:80]!r}"
    if not isinstance(error, dict) or not isinstance(error.get("code"), int):
        return f"not a CNI error object: {text[:80]!r}"
    if not isinstance(error.get("msg"), str):
        return f"a CNI error without msg: {text[:80]!r}"
    return None


def fuzz_cases(netns_paths: Sequence[str], hostile_paths: Sequence[str]) -> Any:
    """A hypothesis strategy of calls: a valid call of a random command whose fields are each
    kept (four times in five) or replaced by garbage, and whose stdin is kept, mutated or
    replaced."""
    from hypothesis import strategies as st

    def field(valid: Any, garbage: Any, one_in: int = 5) -> Any:
        return st.integers(1, one_in).flatmap(lambda n: garbage if n == 1 else valid)

    env_text = st.binary(max_size=64).map(lambda b: b.replace(b"\0", b""))
    env_garbage = st.one_of(st.none(), st.just(b""), env_text, st.text(max_size=40).map(_env_bytes))
    ident = st.binary(min_size=32, max_size=32).map(lambda b: b.hex().encode())
    # Pod names from the runtime end up in OVS external_ids and flow owners: mostly the pods
    # whose objects exist (kubelet creates the object before calling CNI, and an ADD waits
    # a while for it), one time in twenty anything the environment can carry.
    garbage_name = env_text.map(lambda b: b.replace(b";", b""))
    namespaces = field(st.sampled_from([n.encode() for n in FUZZ_NAMESPACES]), garbage_name, 20)
    names = field(st.sampled_from([n.encode() for n in FUZZ_PODS]), garbage_name, 20)
    args = st.tuples(namespaces, names).map(
        lambda p: b"IgnoreUnknown=1;K8S_POD_NAMESPACE=" + p[0] + b";K8S_POD_NAME=" + p[1]
    )
    env = st.fixed_dictionaries(
        {
            "CNI_COMMAND": field(st.sampled_from([c.encode() for c in COMMANDS]), env_garbage),
            "CNI_CONTAINERID": field(ident, env_garbage),
            "CNI_NETNS": field(
                st.sampled_from([p.encode() for p in netns_paths]),
                st.one_of(env_garbage, st.sampled_from([p.encode() for p in hostile_paths])),
            ),
            "CNI_IFNAME": field(st.sampled_from([b"eth0", b"net1"]), env_garbage),
            "CNI_ARGS": field(args, env_garbage),
            "CNI_PATH": field(st.just(CNI_PATH.encode()), env_garbage),
            # The executable's own variable: garbage must fall back to the default timeout.
            "PLUMB_CNI_TIMEOUT": st.sampled_from([None, b"", b"soon", b"0", b"-5", b"1e9"]),
        }
    )
    return st.builds(CniCase, env, _stdin_strategy(st))


def _env_bytes(text: str) -> bytes:
    return text.replace("\0", "").encode("utf-8", "surrogateescape")


def _stdin_strategy(st: Any) -> Any:
    """Network configs: valid ones (ipam plumb or host-local, any supported version), ones
    with a key dropped or given a value of the wrong type, other JSON, and any bytes."""
    json_values = st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
        max_leaves=8,
    )
    valid = st.builds(
        lambda version, ipam: {"cniVersion": version, "name": "fuzz", "type": "plumb", **ipam},
        st.sampled_from(CNI_VERSIONS),
        st.sampled_from([{}, {"ipam": {"type": "host-local"}}, {"ipam": {"type": "plumb"}}]),
    )
    keys = st.sampled_from(["cniVersion", "name", "type", "ipam", "prevResult", "runtimeConfig"])
    mutated = st.builds(_mutate, valid, keys, st.one_of(st.just(_DROP), json_values))
    as_bytes = st.one_of(
        valid.map(_json_bytes),
        valid.map(_json_bytes),
        mutated.map(_json_bytes),
        json_values.map(_json_bytes),
        valid.map(_json_bytes).flatmap(lambda b: st.integers(0, len(b)).map(lambda n: b[:n])),
        st.binary(max_size=256),
    )
    return as_bytes


_DROP = object()


def _mutate(conf: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    out = dict(conf)
    if value is _DROP:
        out.pop(key, None)
    else:
        out[key] = value
    return out


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


@dataclass
class FuzzFigures:
    cases: int = 0
    successes: int = 0
    adds_succeeded: int = 0
    dels_after_add_failed: int = 0
    bad_outputs: list[str] = field(default_factory=list)
    codes: Counter[int] = field(default_factory=Counter)
    slowest_s: float = 0.0
    internal_errors: list[str] = field(default_factory=list)  # code 999: the agent's own bug


def run_fuzz(node: NodeLayout, netns_paths: Sequence[str], cases: int, seed: int) -> FuzzFigures:
    """`cases` calls of the executable against the node's agent; each successful ADD is
    followed by its DEL, as a runtime does when the container goes (a failed ADD is not: the
    agent must have rolled it back by itself)."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import seed as hseed

    figures = FuzzFigures()
    hostile = [host.netns_path(node.netns), "/proc/self/ns/net", "/", "/dev/null", "/etc/hostname"]

    @hseed(seed)
    @settings(
        max_examples=cases,
        deadline=None,
        database=None,
        derandomize=False,
        suppress_health_check=list(HealthCheck),
    )
    @given(fuzz_cases(netns_paths, hostile))
    def check(case: CniCase) -> None:
        answer = call_plumb(case, node.cni_socket)
        _record(figures, case, answer)
        if answer.exit_code == 0 and case.command == b"ADD":
            figures.adds_succeeded += 1
            undo = call_plumb(case.with_command("DEL"), node.cni_socket)
            if undo.exit_code != 0:
                figures.dels_after_add_failed += 1
                figures.bad_outputs.append(f"DEL after ADD failed: {undo.stdout[:120]!r}")

    check()
    return figures


def _record(figures: FuzzFigures, case: CniCase, answer: CniAnswer) -> None:
    figures.cases += 1
    figures.slowest_s = max(figures.slowest_s, answer.seconds)
    if answer.exit_code == 0:
        figures.successes += 1
    else:
        with contextlib.suppress(ValueError, TypeError, KeyError, AttributeError):
            code = int(json.loads(answer.stdout)["code"])
            figures.codes[code] += 1
            if code == 999 and len(figures.internal_errors) < 10:
                seen = answer.stdout.strip()[:200]
                figures.internal_errors.append(f"{seen!r} for {case.env!r} {case.stdin[:80]!r}")
    problem = output_problem(case, answer)
    if problem and len(figures.bad_outputs) < 20:
        figures.bad_outputs.append(f"{problem}: env={case.env!r} stdin={case.stdin[:80]!r}")


@dataclass(frozen=True)
class NodeInventory:
    """What a node holds that a pod attachment makes: bridge ports, host links, IPAM
    reservations, pod flows; and what its fuzz namespaces hold."""

    ports: tuple[str, ...]
    links: tuple[str, ...]
    reservations: tuple[str, ...]
    pod_flows: int
    sandbox_links: tuple[str, ...]

    def leaks_against(self, before: NodeInventory) -> dict[str, list[str]]:
        out = {}
        for name in ("ports", "links", "reservations", "sandbox_links"):
            extra = sorted(set(getattr(self, name)) - set(getattr(before, name)))
            if extra:
                out[name] = extra
        if self.pod_flows != before.pod_flows:
            out["pod_flows"] = [f"{before.pod_flows} -> {self.pod_flows}"]
        return out


def inventory(node: NodeLayout, sandboxes: Sequence[str] = ()) -> NodeInventory:
    links = json.loads(host.run(["ip", "-n", node.netns, "-j", "link", "show"]))
    sandbox_links = [
        f"{ns}:{link['ifname']}"
        for ns in sandboxes
        for link in json.loads(host.run(["ip", "-n", ns, "-j", "link", "show"]))
        if link["ifname"] != "lo"
    ]
    reservations = (
        [
            str(p.relative_to(node.ipam_dir))
            for p in node.ipam_dir.rglob("*")
            if p.is_file() and not p.name.startswith(("last_reserved_ip", "lock", "."))
        ]
        if node.ipam_dir.exists()
        else []
    )
    pod_flows = sum(
        1
        for line in dump_flows(node)
        if Cookie.decode(int(line.split("cookie=")[1].split(",")[0], 16)).category == 2
    )
    return NodeInventory(
        tuple(bridge_ports(node)),
        tuple(sorted(link["ifname"] for link in links)),
        tuple(sorted(reservations)),
        pod_flows,
        tuple(sorted(sandbox_links)),
    )


def write_fuzz_pod_objects(w: World) -> None:
    """The objects of the pods fuzzed calls name, as kubelet writes them before CNI ADD."""
    manifests = ManifestsDir(w.layout.manifests_dir)
    for namespace in FUZZ_NAMESPACES:
        for name in FUZZ_PODS:
            pod = pod_object(name, "node1", {"app": "fuzz"})
            pod["metadata"]["namespace"] = namespace
            manifests.write(pod)
    time.sleep(1.0)  # the agents poll the directory every 0.2 s


def cni_fuzz(cases: int = 10_000, seed: int = 7, progress: Progress = _quiet) -> dict[str, Any]:
    """Fuzz the CNI executable against a one-node lab's agent, then check that nothing leaked
    and that the node still attaches pods that talk."""
    with world(nodes=1, populated=False, progress=progress) as w:
        node = w.node("node1")
        sandboxes = [f"{w.layout.name}-fuzz{i}" for i in range(3)]
        for name in sandboxes:
            host.ensure_netns(name)
        try:
            write_fuzz_pod_objects(w)
            before = inventory(node, sandboxes)
            agent = cluster.agent_pid(node)
            started = time.monotonic()
            figures = run_fuzz(node, [host.netns_path(n) for n in sandboxes], cases, seed)
            took = time.monotonic() - started
            leaks = inventory(node, sandboxes).leaks_against(before)
            alive = cluster.agent_pid(node) == agent and cluster.agent_ready(node)
        finally:
            for name in sandboxes:
                host.delete_netns(name)
        w.apply([pod_object("after-a", "node1", {"app": "a"}), pod_object("after-b", "node1", {})])
        still_works = Lane(w.pod("after-a"), w.pod("after-b"), "TCP", True).probe_once(2.0)[0]
    return {
        "scenario": "cni-fuzz",
        "cases": figures.cases,
        "seconds": round(took, 1),
        "successes": figures.successes,
        "adds_succeeded": figures.adds_succeeded,
        "error_codes": dict(sorted(figures.codes.items())),
        "bad_outputs": figures.bad_outputs,
        "internal_errors": figures.internal_errors,
        "dels_after_add_failed": figures.dels_after_add_failed,
        "slowest_call_s": round(figures.slowest_s, 3),
        "leaks": leaks,
        "agent_alive_and_ready": alive,
        "pods_work_afterwards": still_works,
    }


# --- scenario: malformed manifests and objects ------------------------------------------------


def _doc(kind: str, name: str, **parts: Any) -> str:
    meta = {"name": name, "namespace": NAMESPACE} if kind not in ("Node", "Namespace") else {}
    meta = meta or {"name": name}
    return json.dumps({"apiVersion": "v1", "kind": kind, "metadata": meta, **parts})


def _policy_doc(name: str, spec: Any) -> str:
    return json.dumps(
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": spec,
        }
    )


def _alias_bomb(levels: int = 7) -> str:
    """A NetworkPolicy whose spec holds YAML aliases that unfold into 9**levels leaves (the
    "billion laughs"): cheap to parse, costly to walk or compare."""
    lines = ["apiVersion: networking.k8s.io/v1", "kind: NetworkPolicy"]
    lines += ["metadata: {name: bad-aliases, namespace: rel}", "spec:"]
    lines.append("  podSelector: {matchLabels: {app: nobody}}")  # valid, selects no pod
    lines.append('  x0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x"]')
    for i in range(1, levels + 1):
        lines.append(f"  x{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def malformed_files() -> dict[str, bytes]:
    """File name -> content: files that are no YAML, documents that are no objects, objects
    the store cannot take, and objects the reconcilers cannot use. Names start `bad-` so the
    agents' logs can be searched for them."""
    web = {"matchLabels": {"app": "web"}}
    text = {
        "bad-not-yaml.yaml": "kind: Pod\nmetadata: {name: [unclosed\n",
        "bad-scalar.yaml": "42\n",
        "bad-list.yaml": "- a\n- b\n",
        "bad-no-kind.yaml": "metadata: {name: x}\n",
        "bad-no-name.yaml": "kind: Pod\nmetadata: {namespace: rel}\n",
        "bad-spec-list.yaml": _doc("Pod", "bad-spec-list", spec=[1, 2]),
        "bad-namespace-int.yaml": "kind: Pod\nmetadata: {name: bad-ns-int, namespace: 7}\n",
        "bad-deep.yaml": "a: " + "[" * 5000 + "]" * 5000 + "\n",
        "bad-aliases.yaml": _alias_bomb(),
        "bad-labels-list.yaml": _doc("Pod", "bad-labels-list", metadata=None),
        "bad-pod-ip.yaml": json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": "bad-pod-ip",
                    "namespace": NAMESPACE,
                    "labels": {"app": "client"},
                },
                "spec": {"nodeName": "node1", "containers": [{"name": "c"}]},
                "status": {
                    "phase": "Running",
                    "podIP": "not-an-ip",
                    "podIPs": [{"ip": "999.1.1.1"}],
                },
            }
        ),
        "bad-pod-labels.yaml": json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": "bad-pod-labels",
                    "namespace": NAMESPACE,
                    "labels": ["app", "client"],
                },
                "spec": {"nodeName": "node2"},
            }
        ),
        "bad-node-cidr.yaml": _doc(
            "Node",
            "node9",
            spec={"podCIDR": "garbage"},
            status={"addresses": [{"type": "InternalIP", "address": "also-garbage"}]},
        ),
        "bad-node-overlap.yaml": _doc(
            "Node",
            "node8",
            spec={"podCIDR": "10.244.2.0/25"},
            status={"addresses": [{"type": "InternalIP", "address": "172.30.0.18"}]},
        ),
        "bad-namespace-labels.yaml": json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": "bad-ns", "labels": "app=web"},
            }
        ),
        "bad-policy-selector.yaml": _policy_doc(
            "bad-policy-selector", {"podSelector": {"matchLabels": ["app", "web"]}}
        ),
        "bad-policy-port.yaml": _policy_doc(
            "bad-policy-port",
            {"podSelector": web, "ingress": [{"ports": [{"port": 70000}, {"port": "no such"}]}]},
        ),
        "bad-policy-endport.yaml": _policy_doc(
            "bad-policy-endport",
            {"podSelector": web, "ingress": [{"ports": [{"port": 90, "endPort": 80}]}]},
        ),
        "bad-policy-cidr.yaml": _policy_doc(
            "bad-policy-cidr",
            {"podSelector": web, "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/99"}}]}]},
        ),
        "bad-policy-types.yaml": _policy_doc(
            "bad-policy-types", {"podSelector": web, "policyTypes": ["Sideways"]}
        ),
        "bad-policy-spec-string.yaml": _policy_doc("bad-policy-spec-string", "allow all"),
        "bad-policy-expression.yaml": _policy_doc(
            "bad-policy-expression",
            {"podSelector": {"matchExpressions": [{"key": "app", "operator": "Maybe"}]}},
        ),
    }
    files = {name: content.encode() for name, content in text.items()}
    files["bad-binary.json"] = bytes(range(256)) * 4
    files["bad-latin1.yaml"] = "kind: Pod\nmetadata: {name: caf\xe9}\n".encode("latin-1")
    return files


# Malformed objects whose complaint names the object rather than its file; None: a valid
# object that is merely odd (unknown fields), accepted without a word.
_LOGGED_AS: dict[str, str | None] = {
    "bad-node-cidr.yaml": "node9",
    "bad-node-overlap.yaml": "node8",
    "bad-aliases.yaml": None,
}


def _unlogged(files: dict[str, bytes], nodes: Sequence[NodeLayout]) -> list[str]:
    """The bad files that no agent named in a warning or error."""
    complaints = [
        line
        for node in nodes
        for line in node.agent_log.read_text(errors="replace").splitlines()
        if "level=warning" in line or "level=error" in line
    ]
    missing = []
    for name in files:
        token = _LOGGED_AS.get(name, name.rsplit(".", 1)[0])
        if token is not None and not any(token in line for line in complaints):
            missing.append(name)
    return sorted(missing)


def bad_manifests(progress: Progress = _quiet) -> dict[str, Any]:
    """Drop malformed files and objects into the manifests directory under traffic: every
    lane keeps its verdict, no agent restarts, each bad file is logged, and a good change made
    afterwards still takes effect (a new pod, a policy)."""
    with world(progress=progress) as w:
        nodes = [w.node("node1"), w.node("node2")]
        pids = [cluster.agent_pid(n) for n in nodes]
        files = malformed_files()
        with Traffic(w.lanes()) as traffic:
            time.sleep(1.0)
            for name, content in files.items():
                (w.layout.manifests_dir / name).write_bytes(content)
            time.sleep(3.0)
        figures = traffic.figures()
        alive = [
            cluster.agent_pid(n) == pid and cluster.agent_ready(n)
            for n, pid in zip(nodes, pids, strict=True)
        ]
        new_pod_s = churn_pod(w, "node2", "after-bad")
        started = time.monotonic()
        ManifestsDir(w.layout.manifests_dir).write(normalized(dict(DB_OPENED), "bench"))
        converge([Lane(w.pod("client"), w.pod("db"), "TCP", True)], timeout=15)
        policy_s = time.monotonic() - started
        unlogged = _unlogged(files, nodes)
    return {
        "scenario": "bad-manifests",
        "malformed_files": len(files),
        "failed_probes": figures.failed,
        "allowed_probes": figures.allowed_probes,
        "leaked": figures.leaked,
        "failing_lanes": figures.failing_lanes,
        "agents_alive_same_process": all(alive),
        "new_pod_s": round(new_pod_s, 3),
        "policy_change_applied_s": round(policy_s, 3),
        "bad_files_no_agent_complained_about": unlogged,
    }


# --- the command line -------------------------------------------------------------------------

SCENARIOS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "agent-restart": lambda a: agent_restart(a.runs or 10, kill=a.kill, progress=a.progress),
    "vswitchd-restart": lambda a: vswitchd_restart(
        a.runs or 5, kill=a.kill != "never", progress=a.progress
    ),
    "ovsdb-restart": lambda a: ovsdb_restart(
        a.runs or 5, kill=a.kill != "never", progress=a.progress
    ),
    "source-down": lambda a: source_down(a.seconds or 60.0, progress=a.progress),
    "partition": lambda a: partition(a.seconds or 10.0, progress=a.progress),
    "security": lambda a: security(progress=a.progress),
    "cni-fuzz": lambda a: cni_fuzz(a.runs or 10_000, progress=a.progress),
    "bad-manifests": lambda a: bad_manifests(progress=a.progress),
    "bad-input": lambda a: {
        "scenario": "bad-input",
        "cni_fuzz": cni_fuzz(a.runs or 10_000, progress=a.progress),
        "bad_manifests": bad_manifests(progress=a.progress),
    },
    "baseline": lambda a: baseline(a.seconds or 30.0, progress=a.progress),
}


def _print(figures: dict[str, Any]) -> None:
    for key, value in figures.items():
        print(f"{key:<34} {value}")
    print(json.dumps(figures), flush=True)


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench reliability", description=__doc__)
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument("--runs", type=int, default=0, help="Repetitions (scenario default).")
    parser.add_argument("--seconds", type=float, default=0, help="Outage or cut length.")
    parser.add_argument(
        "--kill",
        choices=("never", "always", "alternate"),
        default="alternate",
        help="Restarts by SIGKILL (a crash): never, always, or every other one.",
    )
    args = parser.parse_args(list(argv))
    if os.geteuid() != 0:
        print("bench reliability needs root (namespaces, OVS)", flush=True)
        return 2
    args.progress = say
    _print(SCENARIOS[args.scenario](args))
    return 0
