"""The pure model against the transcribed upstream suite: for every case, step and check,
`controller.netpol_model.verdict` over the step's objects gives exactly the expected table (a pod
to itself is not judged, as upstream). Fast: no lab, no OVS. Also checks that the data and the
loader say what they should, so a broken transcription cannot pass silently."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.netpol_model import World, verdict
from tests.netpol_conformance import cases as c

CASES = c.all_cases()
UPSTREAM = [case for case in CASES if not case.mirror]


def observed(state: c.State, check: c.Check) -> c.Table:
    namespaces, pods, policies = state.objects(c.model_ips())
    world = World.of(policies, pods, namespaces)
    return {
        (src, dst): verdict(world, _key(src), _key(dst), check.protocol, check.port)
        for src in c.PODS
        for dst in c.PODS
    }


def _key(ref: str) -> tuple[str, str]:
    namespace, name = ref.split("/")
    return namespace, name


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_model_gives_the_upstream_tables(case: c.Case) -> None:
    for number, (step, state) in enumerate(case.states(), 1):
        for check in step.checks:
            expected, seen = check.table(), observed(state, check)
            wrong = c.wrong_pairs(expected, seen)
            assert not wrong, (
                f"{case.upstream}: step {number}, {check.probe}: {len(wrong)} wrong\n"
                f"{c.comparison(expected, seen)}"
            )


def test_every_upstream_test_is_transcribed() -> None:
    """42 tests of the main context, 3 of the UDP one, 3 of the SCTP one (upstream 9db638c0);
    names are unique within a context, and each main-context case has its mirror."""
    suites = {case.suite for case in UPSTREAM}
    counts = {s: sum(case.suite == s for case in UPSTREAM) for s in suites}
    assert counts == {
        c.MAIN_SUITE: 42,
        f"{c.MAIN_SUITE} using UDP": 3,
        f"{c.MAIN_SUITE} using SCTP": 3,
    }
    assert len({(case.suite, case.upstream) for case in UPSTREAM}) == len(UPSTREAM)
    assert len(CASES) == 48 + 42


def test_every_policy_is_valid_for_the_model() -> None:
    """A policy the model refuses would silently drop out of `World.of`."""
    from controller.netpol_model import parse_policy

    for case in CASES:
        for _, state in case.states():
            for policy in state.objects(c.model_ips())[2]:
                parse_policy(policy)


def test_a_wrong_table_is_reported_with_the_three_grids() -> None:
    """The comparison can fail: one flipped cell is found and printed; the diagonal is not."""
    check = c.Check("TCP", 80, (("*", "x/*", False),))
    expected = check.table()
    seen: dict[c.Pair, bool | None] = dict(expected)
    seen[("y/a", "x/b")] = True
    seen[("x/a", "x/a")] = True  # loopback: not judged
    seen[("z/c", "z/b")] = None  # skipped: not judged
    assert c.wrong_pairs(expected, seen) == [("y/a", "x/b")]
    text = c.comparison(expected, seen)
    assert "expected:\n-\tx/a\tx/b" in text and "\ny/a\t.\tX\t" in text.split("comparison")[1]


def test_expectations_apply_in_order() -> None:
    table = c.Check("TCP", 80, (("*", "x/a", False), ("x/b", "x/a", True))).table()
    assert not table[("y/a", "x/a")] and table[("x/b", "x/a")] and table[("x/a", "x/b")]


def test_mirror_swaps_protocols_defaults_and_named_ports() -> None:
    [case] = [x for x in UPSTREAM if x.id == "19-egress-on-one-named-port"]
    mirror = c.mirrored(case)
    port = mirror.steps[0].put[0]["spec"]["egress"][0]["ports"][0]
    assert port == {"port": "serve-80-udp", "protocol": "UDP"}
    assert [ch.probe for ch in mirror.steps[0].checks] == ["UDP/80", "UDP/81"]
    sctp = c.mirrored(next(x for x in UPSTREAM if x.id == "38-sctp-is-not-tcp"))
    assert sctp.steps[0].put[1]["spec"]["ingress"][0]["ports"][0]["protocol"] == "SCTP"


def test_placeholders_become_pod_addresses() -> None:
    [case] = [x for x in UPSTREAM if x.id == "35-egress-cidr-except"]
    _, state = next(case.states())
    ips = c.model_ips()
    block = state.objects(ips)[2][0]["spec"]["egress"][0]["to"][0]["ipBlock"]
    assert block == {"cidr": f"{ips['x/a']}/4", "except": [f"{ips['x/b']}/32"]}


def test_a_malformed_case_is_refused(tmp_path: Path) -> None:
    (tmp_path / "01-bad.yaml").write_text(
        "suite: s\nupstream: u\nsteps:\n  - create: []\n    chek: []\n"
    )
    with pytest.raises(c.CaseError, match=r"01-bad\.yaml"):
        c.load_cases(tmp_path)
    (tmp_path / "01-bad.yaml").write_text(
        "suite: s\nupstream: u\nsteps:\n"
        "  - check: [{probe: TCP/80, expect: [{deny: 'q/* -> *'}]}]\n"
    )
    with pytest.raises(c.CaseError, match="NS/POD"):
        c.load_cases(tmp_path)
