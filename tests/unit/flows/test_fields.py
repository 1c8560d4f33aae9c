"""The register layout: declared fields never overlap, marks stay inside their fields."""

import pytest

from flows.fields import PKT_SOURCE, REG_FIELDS, RegField, overlapping_fields


def test_declared_register_fields_do_not_overlap():
    assert overlapping_fields() == []


def test_overlap_detection_finds_a_planted_overlap():
    planted = RegField("PLANTED", "reg0", 2, 5)
    assert ("PKT_SOURCE", "PLANTED") in overlapping_fields((*REG_FIELDS, planted))


def test_mark_value_must_fit_its_field():
    with pytest.raises(ValueError, match="PKT_SOURCE"):
        PKT_SOURCE.mark(16)


def test_field_bits_must_lie_inside_the_register():
    with pytest.raises(ValueError, match="outside reg1"):
        RegField("TOO_WIDE", "reg1", 30, 32)
