"""The policy reconciler: store changes and local pod attachments in, one atomic bundle of policy
flows out per change.

Store handlers and the pod-flow listener only queue what changed. One worker takes everything
queued, feeds it to the pure model (`controller.netpol_model.PolicyModel`, which says which
policies a change affects), compiles those policies, lets `flows.policy.PolicyFlows` work out
which flow owners changed, and hands exactly those owners to `Switch.replace_many`: one atomic
bundle, no moment in which traffic is wrongly allowed or dropped. A failed bundle leaves those
owners marked unsynced and is retried with backoff; the switch's cache only moves on success.
Each such bundle also carries the next revalidation epoch (`flows.policy.epoch_flows`), so that
ovs-vswitchd re-translates the datapath's new-connection megaflows rather than modifying them
in place, which the userspace datapath can get wrong.

Invalid policies are logged and shown by `status()`; the others stay in force.

One bad object must not stop every other change. A key whose object cannot be taken in (reading
it into the model, or compiling the policy, raises) is logged naming the object and set aside:
the model keeps what it knew of it, the rest of the batch goes on, and the key is tried again
alone, slowly (`poison_retry` seconds, doubling up to `poison_retry_cap`), or at once when it
changes. An owner whose flows cannot be built (`PolicyFlowError`: more rules on one clause than
a flow holds) keeps its installed flows and is logged; the other owners are committed. Only a
failed commit (an OpenFlow error) holds up the whole bundle, and it is retried with backoff.
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
from controller.netpol_model import (
    CompiledPolicy,
    PolicyKey,
    PolicyModel,
    pod_address_problem,
    pod_info,
)
from controller.openflow import OpenFlowError
from controller.store import ObjectKey, Store, StoreEvent
from controller.switch import Epoch, Switch
from flows.flow import Flow
from flows.policy import (
    EPOCH_OWNER,
    LocalTarget,
    PolicyFlowError,
    PolicyFlows,
    Rule,
    epoch_flows,
    peers_text,
    ports_text,
)

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


@dataclass(slots=True)
class _SetAside:
    """A key whose object could not be taken in: when to try it again, and why it failed."""

    failures: int
    due: float
    error: str


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
        poison_retry: float = 5.0,
        poison_retry_cap: float = 300.0,
    ) -> None:
        self.store = store
        self.switch = switch
        # Every bundle of policy owners also moves the revalidation epoch, so that OVS
        # re-translates new-connection megaflows instead of modifying them in place
        # (flows.policy.epoch_flows).
        switch.epoch = Epoch(EPOCH_OWNER, "policy/", lambda gen: epoch_flows(gen, round_))
        self.node_name = local_node_name
        self._local_pods = local_pods
        self._clock = clock
        self._retry_base, self._retry_cap = retry_base, retry_cap
        self._poison_retry, self._poison_retry_cap = poison_retry, poison_retry_cap
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
        self._set_aside: dict[ObjectKey, _SetAside] = {}  # keys that raised; under _cond
        self._bad_owners: dict[str, str] = {}
        self._bad_addresses: dict[
            ObjectKey, str
        ] = {}  # pods warned about, and why  # owners whose flows cannot be built, and why
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
                # Not one key's fault (those are set aside in `_process`): a bug on the commit
                # path. Level-triggered: the keys go back and are read from the store again.
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
        """Wait (holding the condition) for queued keys, a due retry or a set-aside key whose
        time has come; None on stop."""
        while not self._stopping:
            now = time.monotonic()
            waiting = [s.due for k, s in self._set_aside.items() if k not in self._pending]
            self._pending.update(k for k, s in self._set_aside.items() if s.due <= now)
            due = self._retry_at is not None and now >= self._retry_at
            if self._pending and (self._retry_at is None or due):
                batch = list(self._pending)
                self._pending.clear()
                return batch
            if due:
                return []
            wakes = [t for t in (self._retry_at, *waiting) if t is not None and t > now]
            self._cond.wait(min(wakes) - now if wakes else None)
        return None

    def _process(self, batch: Iterable[ObjectKey]) -> None:
        """Apply the changes to the model, recompute what they affect, commit one bundle.

        A key that raises is set aside (`_set_aside_key`) and the others go on; an OpenFlow
        error from the commit propagates, leaving the owners unsynced for the retry.
        """
        failed: dict[ObjectKey, Exception] = {}
        keys = sorted(set(batch), key=lambda k: _ORDER.get(k[0], 9))
        with self._model_lock:
            dirty: set[PolicyKey] = set()
            for key in keys:
                try:
                    dirty |= self._apply(key)
                except Exception as exc:
                    failed[key] = exc
            now = self._clock()
            for policy in sorted(dirty):
                try:
                    compiled = self.model.compile(policy)
                    owners = self.flows.update_policy(
                        _policy_name(policy), compiled.rules, compiled.isolated, now
                    )
                except Exception as exc:
                    failed[("NetworkPolicy", *policy)] = exc
                    continue
                self._compiled[policy] = compiled
                self._unsynced |= owners
            self._unrealised |= dirty
            changes = self._owner_changes()
            sent = set(changes)
            # Realised: their flows are all committed. While an owner cannot be built, which
            # policies it serves is not tracked: none is claimed realised.
            realised = set() if self._bad_owners else set(self._unrealised)
            realised -= {(k[1], k[2]) for k in failed if k[0] == "NetworkPolicy"}
        self._account(keys, failed)
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

    def _owner_changes(self) -> dict[str, Iterable[Flow]]:
        """The flows of every unsynced owner that can be built; the others keep their flows
        on the bridge and stay unsynced (tried again with the next batch)."""
        changes: dict[str, Iterable[Flow]] = {}
        for owner in sorted(self._unsynced):
            try:
                changes[owner] = self.flows.owner_flows(owner)
            except Exception as exc:
                error = _describe(exc)
                if self._bad_owners.get(owner) != error:
                    log.error(
                        "policy flows of %s not built; its installed flows stay: %s",
                        owner,
                        error,
                        exc_info=not isinstance(exc, PolicyFlowError),
                    )
                self._bad_owners[owner] = error
                continue
            if self._bad_owners.pop(owner, None) is not None:
                log.info("policy flows of %s built again", owner)
        return changes

    def _account(self, keys: Iterable[ObjectKey], failed: Mapping[ObjectKey, Exception]) -> None:
        """Set aside the keys that raised (logged once per distinct error) and take back those
        that went through."""
        now = time.monotonic()
        with self._cond:
            for key in keys:
                if key in failed:
                    continue
                if self._set_aside.pop(key, None) is not None:
                    log.info("%s taken in again", _object_name(key))
            for key, exc in failed.items():
                self._set_aside_key(key, exc, now)

    def _set_aside_key(self, key: ObjectKey, exc: Exception, now: float) -> None:
        # Called holding _cond.
        previous = self._set_aside.get(key)
        failures = previous.failures + 1 if previous is not None else 1
        delay = min(self._poison_retry_cap, self._poison_retry * 2 ** (failures - 1))
        error = _describe(exc)
        self._set_aside[key] = _SetAside(failures, now + delay, error)
        if previous is None or previous.error != error:
            log.error(
                "policy reconciler skipped %s (what was known of it stays; the other changes "
                "go on); trying it again in %.0fs: %s",
                _object_name(key),
                delay,
                error,
                exc_info=exc,
                extra={"object": _object_name(key)},
            )
        else:
            log.warning(
                "policy reconciler still skips %s; trying it again in %.0fs: %s",
                _object_name(key),
                delay,
                error,
                extra={"object": _object_name(key)},
            )

    def set_aside(self) -> dict[str, str]:
        """The objects the reconciler could not take in, with the error (for status)."""
        with self._cond:
            return {_object_name(k): s.error for k, s in sorted(self._set_aside.items())}

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
            self._check_pod_addresses(key, obj)
            return self.model.set_pod((namespace, name), pod_info(obj) if obj else None)
        if kind == "Namespace":
            labels = (obj.get("metadata") or {}).get("labels") or {} if obj else None
            return self.model.set_namespace(name, labels)
        if kind == "NetworkPolicy":
            return self._apply_policy((namespace, name), obj)
        if kind == "Node":
            self._unsynced |= self.flows.set_node_addresses(*node_addresses(obj))
        return set()

    def _check_pod_addresses(self, key: ObjectKey, obj: Mapping[str, Any] | None) -> None:
        """Warn once per pod (and again if it changes) about addresses that are not IPs."""
        problem = pod_address_problem(obj) if obj else None
        if problem is None:
            self._bad_addresses.pop(key, None)
            return
        if self._bad_addresses.get(key) == problem:
            return
        self._bad_addresses[key] = problem
        info = pod_info(obj) if obj else None
        peer = (
            "its other address is used"
            if info is not None and info.ip is not None
            else "it is neither selected nor matched as a policy peer"
        )
        log.warning(
            "pod %s/%s has a malformed address, ignored (%s): %s",
            key[1],
            key[2],
            peer,
            problem,
            extra={"pod": f"{key[1]}/{key[2]}"},
        )

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
            peers=peers_text(rule.peers),
            ports=ports_text(rule.ports),
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


def _object_name(key: ObjectKey) -> str:
    kind, namespace, name = key
    if kind == "LocalPods":
        return "the local pods"
    return f"{kind} {namespace}/{name}" if namespace else f"{kind} {name}"


def _describe(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())
