"""The reliability tier: Plumb under faults on labs of its own (bench.reliability's scenarios
with smaller numbers, asserted on). Lab-marked tests skip, with the reason, where a lab cannot be
built (no root, no OVS, no reference CNI plugins); the whole tier is meant to stay under about
four minutes."""

from tests.lab.conftest import _lab_prerequisites

__all__ = ["_lab_prerequisites"]
