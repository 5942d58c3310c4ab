"""The one registry of type tags used by the canonical encoding.

A tag is an int written in front of every value's body. Tags are never
reused: a retired type keeps its number.
"""

from __future__ import annotations

import enum

__all__ = ["Tag"]


class Tag(enum.IntEnum):
    MAP = 1
    REGISTER = 2  # multi-value register
    LWW = 3  # last-writer-wins register
    COUNTER = 4  # PN-counter
    SET = 5  # add-wins set
    FLAG = 6  # enable-wins flag
    LIST = 7  # sequence of JSON values
    TEXT = 8  # sequence of characters

    @property
    def label(self) -> str:
        return _LABELS[self]


_LABELS = {
    Tag.MAP: "map",
    Tag.REGISTER: "register",
    Tag.LWW: "lww-register",
    Tag.COUNTER: "counter",
    Tag.SET: "set",
    Tag.FLAG: "flag",
    Tag.LIST: "list",
    Tag.TEXT: "text",
}
