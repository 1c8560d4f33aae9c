"""The declared pipeline: numbering, names, and flows that break the declaration."""

import pytest

from flows.fields import FROM_POD, TARGET_OFPORT
from flows.flow import GotoTable, Load, SetField, match
from flows.pipeline import PIPELINE, TABLES, Miss, PipelineError, pipeline_markdown, table

DESIGN_ORDER = [
    "PipelineRootClassifier",
    "ARPSpoofGuard",
    "ARPResponder",
    "Classifier",
    "SpoofGuard",
    "UnSNAT",
    "ConntrackZone",
    "ConntrackState",
    "PreRoutingClassifier",
    "SessionAffinity",
    "ServiceLB",
    "EndpointDNAT",
    "AntreaPolicyEgressRule",
    "EgressRule",
    "EgressDefaultRule",
    "EgressMetric",
    "L3Forwarding",
    "EgressMark",
    "L3DecTTL",
    "SNATMark",
    "SNAT",
    "L2ForwardingCalc",
    "IngressSecurityClassifier",
    "AntreaPolicyIngressRule",
    "IngressRule",
    "IngressDefaultRule",
    "IngressMetric",
    "ConntrackCommit",
    "Output",
]


def test_tables_are_numbered_contiguously_in_design_order():
    assert [t.name for t in PIPELINE] == DESIGN_ORDER
    assert [TABLES[name].id for name in DESIGN_ORDER] == list(range(len(DESIGN_ORDER)))


def test_drop_tables_are_the_ones_design_names():
    drops = {t.name for t in PIPELINE if t.miss is Miss.DROP}
    assert drops == {
        "PipelineRootClassifier",
        "ARPSpoofGuard",
        "ARPResponder",
        "Classifier",
        "SpoofGuard",
        "Output",
    }


def test_match_outside_declaration_names_table_and_field():
    with pytest.raises(PipelineError, match=r"table Output: may not match field 'ipv4_dst'"):
        table("Output").flow(10, match(eth_type=0x0800, ipv4_dst="10.0.0.1"))


def test_write_outside_declaration_names_table_and_field():
    with pytest.raises(PipelineError, match=r"table SpoofGuard: may not write field 'TARGET"):
        table("SpoofGuard").flow(10, match(in_port=1), [Load(TARGET_OFPORT, 3)])
    with pytest.raises(PipelineError, match=r"table Classifier: may not write field 'eth_dst'"):
        table("Classifier").flow(
            10, match(in_port=1), [SetField.of("eth_dst", "aa:bb:cc:dd:ee:ff")]
        )


def test_backward_jump_is_refused():
    with pytest.raises(PipelineError, match="jump backwards"):
        table("L3Forwarding").flow(10, match(), [GotoTable("Classifier")])


def test_undeclared_forward_jump_is_refused():
    with pytest.raises(PipelineError, match="may not jump to 'Output'"):
        table("Classifier").flow(10, match(in_port=1), [GotoTable("Output")])


def test_goto_must_be_last():
    with pytest.raises(PipelineError, match="last action"):
        table("Classifier").flow(
            10, match(in_port=1), [GotoTable("SpoofGuard"), Load.mark(FROM_POD)]
        )


def test_priority_range_is_checked():
    with pytest.raises(PipelineError, match="priority"):
        table("Output").flow(70000, match())


def test_generated_markdown_lists_every_table():
    doc = pipeline_markdown()
    for name in DESIGN_ORDER:
        assert f"| {name} |" in doc


def test_pipeline_doc_is_generated_from_the_declaration():
    from pathlib import Path

    from flows.pipeline import pipeline_document

    doc = Path(__file__).parents[3] / "docs" / "pipeline.md"
    assert doc.read_text() == pipeline_document(), "regenerate: plumbctl pipeline --markdown"
