"""The 64-bit flow cookie: round (16) | category (8) | reserved (8) | object id (32).

The round makes restart cleanup one masked delete; category and object id make per-pod, per-node
and per-rule dumps and counters one cookie/mask query.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

ROUND_SHIFT = 48
CATEGORY_SHIFT = 40
ROUND_MASK = 0xFFFF << ROUND_SHIFT
CATEGORY_MASK = 0xFF << CATEGORY_SHIFT
OBJECT_MASK = 0xFFFFFFFF
MAX_ROUND = 0xFFFF


class Category(IntEnum):
    """What kind of owner a flow belongs to."""

    PIPELINE = 1
    POD = 2
    NODE = 3
    POLICY = 4
    SERVICE = 5
    TRACE = 6


@dataclass(frozen=True, slots=True)
class Cookie:
    round: int
    category: Category
    object_id: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.round <= MAX_ROUND:
            raise ValueError(f"cookie round {self.round} outside 0..{MAX_ROUND}")
        if not 0 <= self.object_id <= OBJECT_MASK:
            raise ValueError(f"cookie object id {self.object_id} outside 32 bits")

    @property
    def value(self) -> int:
        return (
            (self.round << ROUND_SHIFT)
            | (int(self.category) << CATEGORY_SHIFT)
            | (self.object_id & OBJECT_MASK)
        )

    @classmethod
    def decode(cls, value: int) -> Cookie:
        return cls(
            round=(value >> ROUND_SHIFT) & 0xFFFF,
            category=Category((value >> CATEGORY_SHIFT) & 0xFF),
            object_id=value & OBJECT_MASK,
        )


def round_filter(round_: int) -> tuple[int, int]:
    """(cookie, mask) selecting every flow of one round."""
    return round_ << ROUND_SHIFT, ROUND_MASK


def object_filter(round_: int, category: Category, object_id: int) -> tuple[int, int]:
    """(cookie, mask) selecting one owner's flows of one round."""
    return Cookie(round_, category, object_id).value, ROUND_MASK | CATEGORY_MASK | OBJECT_MASK


def category_filter(category: Category) -> tuple[int, int]:
    """(cookie, mask) selecting one category's flows of any round."""
    return int(category) << CATEGORY_SHIFT, CATEGORY_MASK


def next_round(previous: int | None) -> int:
    """The round after `previous`; rounds run 1..MAX_ROUND and wrap, never using 0."""
    if previous is None or previous >= MAX_ROUND:
        return 1
    return previous + 1
