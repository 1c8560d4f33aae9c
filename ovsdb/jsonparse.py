"""A fast JSON-RPC message parser for python-ovs, used when its C parser is missing.

python-ovs reads OVSDB's JSON-RPC stream with `ovs.json.Parser`: fed chunk by chunk, it says
how much of a chunk it took and when one whole value is done. That parser is C (`ovs._json`)
only when python-ovs was built against libopenvswitch; the `ovs` distribution on PyPI installs
without it, and the pure-Python fallback lexes a character at a time: about 2 us per byte,
over a millisecond for every update ovsdb-server sends (docs/design-notes.md, "OVSDB client").

`MessageParser` has the same three methods. It only finds where the value ends (a regular
expression jumps between quotes, brackets and braces, tracking string escapes across chunks),
then hands the text to the standard library's C decoder. JSON-RPC messages are objects, so a
value ends when its outermost brace closes.
"""

from __future__ import annotations

import json
import re
from typing import Any

import ovs.json

_STRUCTURE = re.compile(r'["{}\[\]]')
_STRING_END_OR_ESCAPE = re.compile(r'["\\]')
_decode = json.JSONDecoder().decode


class MessageParser:
    """Drop-in for `ovs.json.Parser` (without C): `feed` text, then `is_done`, then `finish`,
    which returns the value, or a string describing the error as python-ovs expects."""

    def __init__(self, check_trailer: bool = False) -> None:
        del check_trailer  # python-ovs passes it for whole documents; messages never need it
        self._parts: list[str] = []
        self._depth = 0
        self._in_string = False
        self._escape_pending = False  # the last chunk ended on a backslash inside a string
        self._done = False
        self._result: Any = None

    def feed(self, text: str) -> int:
        """Take text up to the end of the value (all of it if the value goes on); return how
        many characters were taken."""
        if self._done or not text:
            return 0
        depth, in_string = self._depth, self._in_string
        pos = 1 if self._escape_pending else 0
        self._escape_pending = False
        while True:
            if in_string:
                match = _STRING_END_OR_ESCAPE.search(text, pos)
                if match is None:
                    break
                i = match.start()
                if text[i] == "\\":
                    if i + 1 >= len(text):
                        self._escape_pending = True
                        break
                    pos = i + 2
                    continue
                in_string, pos = False, i + 1
                continue
            match = _STRUCTURE.search(text, pos)
            if match is None:
                break
            i = match.start()
            pos = i + 1
            char = text[i]
            if char == '"':
                in_string = True
            elif char in "{[":
                depth += 1
            else:
                depth -= 1
                if depth <= 0:
                    self._parts.append(text[:pos])
                    self._complete()
                    return pos
        self._parts.append(text)
        self._depth, self._in_string = depth, in_string
        return len(text)

    def is_done(self) -> bool:
        return self._done

    def finish(self) -> Any:
        if not self._done:
            self._done = True
            return "unexpected end of input"
        return self._result

    def _complete(self) -> None:
        self._done = True
        try:
            self._result = _decode("".join(self._parts))
        except ValueError as exc:
            self._result = f"JSON parse error: {exc}"
        self._parts = []


def install() -> None:
    """Make python-ovs parse JSON-RPC with `MessageParser` unless its C parser is there.
    Idempotent; affects every python-ovs connection in the process.

    The swap happens where python-ovs makes its own for the C parser, in `Parser.__new__`:
    the class stays in place (its methods name it), and `Parser()` returns ours."""
    if ovs.json.PARSER == ovs.json.PARSER_C or getattr(ovs.json.Parser, _INSTALLED, False):
        return
    ovs.json.Parser.__new__ = staticmethod(_new_message_parser)
    setattr(ovs.json.Parser, _INSTALLED, True)


_INSTALLED = "_plumb_message_parser"


def _new_message_parser(cls: type, *args: Any, **kwargs: Any) -> MessageParser:
    del cls
    return MessageParser(*args, **kwargs)


def python_ovs_parser() -> Any:
    """python-ovs's own pure-Python parser, even after `install` (tests compare with it)."""
    parser = object.__new__(ovs.json.Parser)
    parser.__init__()
    return parser
