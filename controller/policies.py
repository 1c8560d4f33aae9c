"""The policy reconciler: store changes and local pod attachments in, one atomic bundle of policy
flows out per change.

Store handlers and the pod-flow listener only queue what changed. One worker takes everything
queued, feeds it to the pure model (`controller.netpol_model.PolicyModel`, which says which
policies a change affects), compiles those policies, lets `flows.policy.PolicyFlows` work out
which flow owners changed, and hands exactly those owners to `Switch.replace_many`: one atomic
bundle, no moment in which traffic is wrongly allowed or dropped. A failed bundle leaves those
owners marked unsynced and is retried with backoff; the switch's cache only moves on success.

Invalid policies are logged and shown by `status()`; the others stay in force.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cni.podnet import PodInterface
from controller.netpol_model import CompiledPolicy, PolicyKey, PolicyModel, pod_info
from controller.openflow import OpenFlowError
from controller.store import ObjectKey, Store, StoreEvent
from controller.switch import Switch
from flows.flow import Flow
from flows.policy import PROTOCOL_NAMES, LocalTarget, PolicyFlows, PortRange, Rule

log = logging.getLogger(__name__)

KINDS = ("Namespace", "Pod", "NetworkPolicy", "Node")
LOCAL_PODS: ObjectKey = ("LocalPods", "", "")
# Within one batch: namespaces and pods before policies, so a policy sees the latest pods.
_ORDER = {"Namespace": 0, "Pod": 1, "LocalPods": 2, "Node": 3, "NetworkPolicy": 4}


@dataclass(frozen=True, slots=True)
class LocalPod:
    """A pod attached to this node's bridge."""

    namespace: str
    name: str
    ofport: int
    ip: str


def local_pods_of(ifaces: Iterable[PodInterface]) -> list[LocalPod]:
    """The local pods of the CNI's interface store (primary interfaces with an IPv4 and port)."""
    return [
        LocalPod(i.pod_namespace, i.pod_name, i.ofport, str(i.ipv4))
        for i in ifaces
        if i.ifname == "eth0" and i.ipv4 is not None and i.ofport > 0 and i.pod_name
    ]


@dataclass(frozen=True, slots=True)
class RuleStatus:
    direction: str
    index: int
    group: str  # named-port resolution ("" for numeric ports or none)
    conj_id: int | None
    peers: str
    ports: str
    targets: int
    live: bool  # has flows (every dimension has a value)


@dataclass(frozen=True, slots=True)
class PolicyStatus:
    namespace: str
    name: str
    realised: bool  # its current flows are committed to the bridge
    error: str | None  # why the latest version is not enforced
    in_force: bool  # a valid version (the latest, or the last good one) is enforced
    rules: tuple[RuleStatus, ...]
    local_pods: tuple[str, ...]


class PolicyReconciler:
    """Keeps the bridge's NetworkPolicy flows equal to what the store says, incrementally."""

    def __init__(
        self,
        store: Store,
        switch: Switch,
        round_: int,
        local_node_name: str,
        local_pods: Callable[[], list[LocalPod]],
        *,
        reuse_delay: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        retry_base: float = 0.05,
        retry_cap: float = 5.0,
    ) -> None:
        self.store = store
        self.switch = switch
        self.node_name = local_node_name
        self._local_pods = local_pods
        self._clock = clock
        self._retry_base, self._retry_cap = retry_base, retry_cap
        self.model = PolicyModel()
        self.flows = PolicyFlows(round_, reuse_delay)
        self._cond = threading.Condition()
        self._pending: set[ObjectKey] = set()
        self._busy = False
        self._stopping = False
        self._failures = 0
        self._retry_at: float | None = None
        self._thread: threading.Thread | None = None
        self._model_lock = threading.Lock()  # the worker writes, status() reads
        self._compiled: dict[PolicyKey, CompiledPolicy] = {}
        self._unsynced: set[str] = set()  # owners whose flows are not committed yet
        self._unrealised: set[PolicyKey] = set()
        self.last_bundle: dict[str, int] = {}  # owners and flow mods of the latest bundle

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Compile and install everything the store holds now (one bundle), then follow changes.

        Call it once the source has synced and local pods are restored: when it returns, the
        policy flows of the store's state are committed.
        """
        self.store.add_handler(self._on_event, kinds=KINDS)
        initial = [LOCAL_PODS, ("Node", "", self.node_name)]
        for kind in ("Namespace", "Pod", "NetworkPolicy"):
            initial.extend(self.store.keys(kind))
        self._process(initial)
        self._thread = threading.Thread(target=self._run, name="policy-reconciler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop following changes; installed flows stay."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until every queued change is committed; False if `timeout` passes first."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._pending or self._busy or self._retry_at is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    # --- inputs -----------------------------------------------------------------------------

    def local_pod_changed(self, _iface: Any, _present: bool) -> None:
        """`SwitchPodFlows.listeners` callback: a local pod's flows came or went."""
        self._enqueue(LOCAL_PODS)

    def _on_event(self, event: StoreEvent) -> None:
        # Runs in the writer's thread under the store lock: queue only.
        if event.kind == "Node" and event.name != self.node_name:
            return
        self._enqueue(event.key)

    def _enqueue(self, key: ObjectKey) -> None:
        with self._cond:
            if self._stopping:
                return
            self._pending.add(key)
            self._cond.notify_all()

    # --- the worker -------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                batch = self._next_batch()
                if batch is None:
                    return
                self._busy = True
            try:
                self._process(batch)
                self._failures = 0
                retry_at = None
            except OpenFlowError as exc:
                delay = min(self._retry_cap, self._retry_base * 2**self._failures)
                self._failures += 1
                retry_at = time.monotonic() + delay
                log.warning("policy flows not committed, retrying in %.2fs: %s", delay, exc)
            except Exception:
                # Level-triggered: the keys go back and are read from the store again.
                log.exception("policy reconciler failed; retrying in %.1fs", self._retry_cap)
                self._failures += 1
                retry_at = time.monotonic() + self._retry_cap
                with self._cond:
                    self._pending.update(batch)
            with self._cond:
                self._busy = False
                self._retry_at = retry_at
                self._cond.notify_all()

    def _next_batch(self) -> list[ObjectKey] | None:
        """Wait (holding the condition) for queued keys or a due retry; None on stop."""
        while not self._stopping:
            now = time.monotonic()
            due = self._retry_at is not None and now >= self._retry_at
            if self._pending and (self._retry_at is None or due):
                batch = list(self._pending)
                self._pending.clear()
                return batch
            if due:
                return []
            wait = None if self._retry_at is None else self._retry_at - now
            self._cond.wait(wait)
        return None

    def _process(self, batch: Iterable[ObjectKey]) -> None:
        """Apply the changes to the model, recompute what they affect, commit one bundle."""
        with self._model_lock:
            dirty: set[PolicyKey] = set()
            for key in sorted(batch, key=lambda k: _ORDER.get(k[0], 9)):
                dirty |= self._apply(key)
            now = self._clock()
            for policy in dirty:
                compiled = self.model.compile(policy)
                self._compiled[policy] = compiled
                self._unsynced |= self.flows.update_policy(
                    _policy_name(policy), compiled.rules, compiled.isolated, now
                )
            self._unrealised |= dirty
            changes: dict[str, Iterable[Flow]] = {
                owner: self.flows.owner_flows(owner) for owner in self._unsynced
            }
            sent = set(self._unsynced)
            realised = set(self._unrealised)
        diff = self.switch.replace_many(changes) if changes else None
        with self._model_lock:
            self._unsynced -= sent
            self._unrealised -= realised
            self.last_bundle = {"owners": len(changes), "flow_mods": len(diff) if diff else 0}
        if changes:
            log.debug(
                "policy flows committed policies=%d owners=%d flow_mods=%d",
                len(dirty),
                len(changes),
                self.last_bundle["flow_mods"],
            )

    def _apply(self, key: ObjectKey) -> set[PolicyKey]:
        kind, namespace, name = key
        if kind == "LocalPods":
            local = {
                (p.namespace, p.name): LocalTarget(p.ofport, p.ip)
                for p in self._local_pods()
                if p.ofport > 0
            }
            return self.model.set_local_pods(local)
        obj = self.store.get(kind, namespace, name)
        if kind == "Pod":
            return self.model.set_pod((namespace, name), pod_info(obj) if obj else None)
        if kind == "Namespace":
            labels = (obj.get("metadata") or {}).get("labels") or {} if obj else None
            return self.model.set_namespace(name, labels)
        if kind == "NetworkPolicy":
            return self._apply_policy((namespace, name), obj)
        if kind == "Node":
            self._unsynced |= self.flows.set_node_addresses(*node_addresses(obj))
        return set()

    def _apply_policy(self, key: PolicyKey, obj: Mapping[str, Any] | None) -> set[PolicyKey]:
        dirty = self.model.set_policy(key, obj)
        error = self.model.error(key)
        if error is not None:
            kept = " (its last valid version stays in force)" if self.model.spec(key) else ""
            log.warning("networkpolicy not enforced%s: %s", kept, error)
        return dirty

    # --- status -----------------------------------------------------------------------------

    def status(self) -> list[PolicyStatus]:
        """Per policy: its rules, the local pods it applies to, realised or the error."""
        with self._model_lock:
            return [self._policy_status(key) for key in self.model.policy_keys()]

    def _policy_status(self, key: PolicyKey) -> PolicyStatus:
        error = self.model.error(key)
        compiled = self._compiled.get(key)
        rules = tuple(self._rule_status(r) for r in compiled.rules) if compiled else ()
        in_force = self.model.spec(key) is not None
        return PolicyStatus(
            namespace=key[0],
            name=key[1],
            realised=in_force and error is None and key not in self._unrealised,
            error=str(error) if error is not None else None,
            in_force=in_force,
            rules=rules,
            local_pods=tuple(f"{ns}/{name}" for ns, name in compiled.targets) if compiled else (),
        )

    def _rule_status(self, rule: Rule) -> RuleStatus:
        return RuleStatus(
            direction=rule.direction.value,
            index=rule.key.index,
            group=rule.key.group,
            conj_id=self.flows.conj_id(rule.key),
            peers=_peers_text(rule),
            ports=_ports_text(rule.ports),
            targets=len(rule.targets),
            live=self.flows.live(rule.key),
        )


def node_addresses(node: Mapping[str, Any] | None) -> tuple[str | None, list[str]]:
    """The node's gateway (first host of its IPv4 PodCIDR) and its IPv4 addresses."""
    if node is None:
        return None, []
    spec = node.get("spec") or {}
    gateway = None
    for cidr in list(spec.get("podCIDRs") or []) or [spec.get("podCIDR") or ""]:
        if cidr and ipaddress.ip_network(cidr, strict=False).version == 4:
            gateway = str(ipaddress.ip_network(cidr, strict=False).network_address + 1)
            break
    addresses = []
    for entry in (node.get("status") or {}).get("addresses") or ():
        text = entry.get("address") or ""
        if entry.get("type") in ("InternalIP", "ExternalIP") and _is_ipv4(text):
            addresses.append(text)
    return gateway, addresses


def _is_ipv4(text: str) -> bool:
    try:
        return ipaddress.ip_address(text).version == 4
    except ValueError:
        return False


def _policy_name(key: PolicyKey) -> str:
    return f"{key[0]}/{key[1]}"


def _peers_text(rule: Rule) -> str:
    if rule.peers is None:
        return "any"
    parts = [f"{len(rule.peers.ips)} pods"] if rule.peers.ips else []
    for block in sorted(rule.peers.blocks):
        excepts = f" except {', '.join(block.excepts)}" if block.excepts else ""
        parts.append(f"{block.cidr}{excepts}")
    return "; ".join(parts) or "none"


def _ports_text(ports: frozenset[PortRange] | None) -> str:
    if ports is None:
        return "any"
    out = []
    for port in sorted(ports):
        name = PROTOCOL_NAMES.get(port.protocol, str(port.protocol))
        if port.lo is None:
            out.append(name)
        elif port.lo == port.hi:
            out.append(f"{name}/{port.lo}")
        else:
            out.append(f"{name}/{port.lo}-{port.hi}")
    return ", ".join(out) or "none"
