"""Lab-marked conformance tests skip, with the reason, where a lab cannot be built (the lab
tier's own check, the same fixture)."""

from tests.lab.conftest import _lab_prerequisites

__all__ = ["_lab_prerequisites"]
