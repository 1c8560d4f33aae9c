"""ovsdb.jsonparse.MessageParser against python-ovs's own pure-Python parser: same values, same
split points, whatever the chunking of the stream."""

from __future__ import annotations

import itertools
import json
from typing import Any

import ovs.json
from hypothesis import given, settings
from hypothesis import strategies as st

from ovsdb.jsonparse import MessageParser, install, python_ovs_parser

# JSON values as OVSDB sends them: no floats (python-ovs and the standard library print
# those differently), strings with quotes, backslashes, braces and non-ASCII but no NUL
# (OVSDB refuses it, and so does python-ovs's parser).
_texts = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"))
_scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | _texts
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_texts, inner, max_size=4),
    max_leaves=20,
)
_messages = st.dictionaries(_texts.filter(bool), _values, min_size=1, max_size=4)


def _parse_stream(new_parser: Any, stream: str, cuts: list[int]) -> list[Any]:
    """Feed `stream` in chunks cut at `cuts`, the way ovs.jsonrpc.Connection.recv does."""
    bounds = sorted({0, len(stream), *(c % (len(stream) + 1) for c in cuts)})
    chunks = [stream[a:b] for a, b in itertools.pairwise(bounds)]
    values: list[Any] = []
    parser = None
    pending = ""
    for chunk in chunks:
        pending += chunk
        while pending:
            if parser is None:
                parser = new_parser()
            pending = pending[parser.feed(pending) :]
            if parser.is_done():
                values.append(parser.finish())
                parser = None
    return values


@settings(max_examples=300, deadline=None)
@given(
    st.lists(_messages, min_size=1, max_size=4),
    st.lists(st.integers(min_value=0), max_size=12),
    st.sampled_from(["", " ", "\n"]),
)
def test_same_messages_as_python_ovs_whatever_the_chunks(
    messages: list[dict[str, Any]], cuts: list[int], separator: str
) -> None:
    stream = separator.join(json.dumps(m, ensure_ascii=False) for m in messages)
    ours = _parse_stream(MessageParser, stream, cuts)
    assert ours == messages
    assert _parse_stream(python_ovs_parser, stream, cuts) == messages


def test_a_backslash_at_the_end_of_a_chunk_escapes_the_next_chunks_first_character() -> None:
    message = {"a": 'x\\"}{y'}
    stream = json.dumps(message)
    cut = stream.index("\\") + 1
    assert _parse_stream(MessageParser, stream, [cut]) == [message]


def test_a_value_in_progress_takes_every_character_and_is_not_done() -> None:
    parser = MessageParser()
    assert parser.feed('{"method": "upd') == len('{"method": "upd')
    assert not parser.is_done()
    assert parser.feed('ate"} {"next') == len('ate"}')
    assert parser.is_done()
    assert parser.finish() == {"method": "update"}


def test_malformed_text_finishes_with_an_error_string_as_python_ovs_expects() -> None:
    parser = MessageParser()
    parser.feed('{"a": nope}')
    assert parser.is_done()
    error = parser.finish()
    assert isinstance(error, str) and "JSON parse error" in error


def test_end_of_stream_inside_a_value_is_an_error_string() -> None:
    parser = MessageParser()
    parser.feed('{"a": [1, 2')
    assert parser.finish() == "unexpected end of input"


def test_once_installed_python_ovs_makes_ours_and_still_works_as_before() -> None:
    install()
    install()
    parser = ovs.json.Parser()
    assert isinstance(parser, MessageParser)
    assert ovs.json.from_string('{"a": [1, "b"]}') == {"a": [1, "b"]}
    assert isinstance(python_ovs_parser(), ovs.json.Parser)
