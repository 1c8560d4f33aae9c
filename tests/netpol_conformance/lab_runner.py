"""Runs conformance cases in one lab, through the lab's Python API: the world of a step is
written (policies, pod and namespace labels, as `lab apply` writes them), the agents are waited
for until every node's flows are exactly what the policy model asks for (`plumbctl policy`'s
report: no rule or isolation missing, nothing stale), then every pair is probed on the check's
port and protocol and compared with the expected table.

One lab serves a whole module: 2 nodes and upstream's 9 pods (x, y, z times a, b, c), scheduled
alternately on the nodes so that most pairs cross the tunnel and some stay on a node.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from lab import apply as lab_apply
from lab import cluster
from lab.layout import LabLayout
from lab.objects import ManifestsDir
from lab.pods import record
from lab.probe import Endpoint, Probe, ProbeResult, run_probes
from plumbctl.nodes import lab_cluster
from plumbctl.policy import report
from tests.netpol_conformance import cases as c

# Short probes: a blocked pair costs one timeout, and all 81 pairs of a check run at once. A
# probe that loses its first SYN races a second one from half the timeout (lab.probe), and a
# check whose result is wrong is probed again, as upstream's ValidateOrFail does.
PROBE_TIMEOUT = 0.8
SYNC_TIMEOUT = 20.0
VERIFY_ROUNDS = 3
Obj = dict[str, Any]
Progress = Callable[[str], None]


class LabFailure(AssertionError):
    """The lab did not do what the case expects (the message has the grids or the report)."""


@dataclass
class CheckResult:
    check: c.Check
    observed: dict[c.Pair, bool | None]
    wrong: list[c.Pair]
    rounds: int
    reason: str = ""  # why a probe could not be made (e.g. no SCTP in this kernel)

    @property
    def skipped(self) -> str:
        """Why nothing was observed (every probe skipped), or "" when something was."""
        return "" if any(v is not None for v in self.observed.values()) else self.reason


@dataclass
class ConformanceLab:
    name: str
    progress: Progress = field(default=lambda _: None)
    endpoints: dict[str, Endpoint] = field(default_factory=dict)

    @property
    def layout(self) -> LabLayout:
        return LabLayout(self.name)

    # --- lifecycle -----------------------------------------------------------------------------

    def up(self) -> None:
        cluster.up(self.name, nodes=2, progress=self.progress)
        state = c.initial_state()
        namespaces, pods, _ = state.objects({})
        for i, pod in enumerate(pods):
            pod["spec"]["nodeName"] = f"node{i % 2 + 1}"
        self._apply([*namespaces, *pods])
        for ref in c.PODS:
            rec = record(self.layout, *ref.split("/"))
            if rec is None or not rec.ip:
                raise LabFailure(f"pod {ref} has no record or address in lab {self.name}")
            self.endpoints[ref] = Endpoint(ref, rec.netns, rec.ip)

    def down(self) -> None:
        cluster.down(self.name)

    @property
    def ips(self) -> dict[str, str]:
        return {ref: e.ip for ref, e in self.endpoints.items()}

    # --- the world -----------------------------------------------------------------------------

    def converge(self, state: c.State) -> None:
        """Write what differs between the manifests and `state` (and nothing else)."""
        manifests = ManifestsDir(self.layout.manifests_dir)
        namespaces, pods, policies = state.objects(self.ips)
        wanted = {_ref(p): p for p in policies}
        stale = [p for p in manifests.list("NetworkPolicy") if _ref(p) not in wanted]
        if stale:
            self._check(lab_apply.delete(self.layout, stale, self.progress))
        changed = [
            obj
            for obj in [*namespaces, *pods, *policies]
            if _differs(obj, manifests.get(obj["kind"], *_key(obj)))
        ]
        if changed:
            self._apply(changed)

    def _apply(self, objects: Sequence[Obj]) -> None:
        self._check(lab_apply.apply(self.layout, objects, self.progress))

    @staticmethod
    def _check(outcome: lab_apply.Outcome) -> None:
        if outcome.errors:
            raise LabFailure("; ".join(outcome.errors))

    def wait_in_sync(self, timeout: float = SYNC_TIMEOUT) -> float:
        """Seconds until every node holds exactly the policy flows the model asks for."""
        start = time.monotonic()
        while True:
            result = report(lab_cluster(self.name))
            if result.in_sync:
                return time.monotonic() - start
            if time.monotonic() - start > timeout:
                problems = "\n".join(result.problems())
                raise LabFailure(f"the agents did not realise the policies in {timeout:g}s:\n"
                                 f"{problems}")  # fmt: skip
            time.sleep(0.1)

    # --- probing -------------------------------------------------------------------------------

    def observe(self, check: c.Check) -> tuple[dict[c.Pair, bool | None], str]:
        """Every pair (a pod to itself too) on the check's port and protocol; None for a probe
        that could not be made, with the reason."""
        probes = [
            Probe(self.endpoints[src], self.endpoints[dst], check.port, check.protocol)
            for src in c.PODS
            for dst in c.PODS
        ]
        results = run_probes(probes, PROBE_TIMEOUT)
        return {_pair(r): (None if r.skipped else r.connected) for r in results}, _skip(results)

    def verify(self, check: c.Check) -> CheckResult:
        """Probe until the table holds or VERIFY_ROUNDS rounds have been wrong."""
        expected = check.table()
        rounds = 0
        while True:
            rounds += 1
            observed, reason = self.observe(check)
            wrong = c.wrong_pairs(expected, observed)
            if not wrong or rounds == VERIFY_ROUNDS:
                return CheckResult(check, observed, wrong, rounds, reason)

    # --- a whole case --------------------------------------------------------------------------

    def run(self, case: c.Case) -> list[CheckResult]:
        """Every step of `case`; LabFailure with the three grids at the first wrong check."""
        results = []
        for number, (step, state) in enumerate(case.states(), 1):
            self.converge(state)
            self.wait_in_sync()
            for check in step.checks:
                result = self.verify(check)
                results.append(result)
                if result.wrong:
                    raise LabFailure(
                        f"{case.id}: {case.upstream}\nstep {number}, {check.probe}: "
                        f"{len(result.wrong)} wrong after {result.rounds} rounds\n"
                        f"{c.comparison(check.table(), result.observed)}"
                    )
        return results


def _pair(result: ProbeResult) -> c.Pair:
    return result.probe.src.ref, result.probe.dst.ref


def _skip(results: Sequence[ProbeResult]) -> str:
    return next((r.skipped for r in results if r.skipped), "")


def _key(obj: Mapping[str, Any]) -> tuple[str, str]:
    meta = obj["metadata"]
    return str(meta.get("namespace", "")), str(meta["name"])


def _ref(obj: Mapping[str, Any]) -> str:
    return "/".join(_key(obj))


def _differs(want: Mapping[str, Any], have: Mapping[str, Any] | None) -> bool:
    """Whether the manifest must be rewritten: labels for pods and namespaces (the only thing
    of theirs a case changes), the spec for policies."""
    if have is None:
        return True
    if want["kind"] == "NetworkPolicy":
        return bool(want["spec"] != have.get("spec"))
    return bool(want["metadata"].get("labels") != (have.get("metadata") or {}).get("labels"))
