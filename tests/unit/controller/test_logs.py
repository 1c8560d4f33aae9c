"""Structured logs: logfmt and JSON lines, fields from `extra`, one line per record, levels."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import time
from collections.abc import Iterator

import pytest

from controller import logs


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield
    root.setLevel(level)
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)


def emit(fmt: str, level: str = "debug") -> str:
    stream = io.StringIO()
    logs.setup_logging(level, fmt, stream)
    log = logging.getLogger("plumb.test")
    log.info("pod added", extra={"pod": "default/web", "ip": "10.0.0.5", "note": 'a "b" c'})
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        log.exception("failed")
    log.debug("detail")
    return stream.getvalue()


def test_text_lines_are_logfmt() -> None:
    lines = emit("text").splitlines()
    assert len(lines) == 3  # the traceback stays on its line
    first = lines[0]
    assert first.startswith("time=")
    assert ' level=info logger=plumb.test msg="pod added" pod=default/web ip=10.0.0.5' in first
    assert 'note="a \\"b\\" c"' in first
    assert "level=error" in lines[1] and "exc=" in lines[1]
    assert "ValueError: bad\\nthing" in lines[1]


def test_json_lines() -> None:
    lines = [json.loads(line) for line in emit("json").splitlines()]
    assert lines[0]["msg"] == "pod added" and lines[0]["pod"] == "default/web"
    assert lines[0]["level"] == "info" and lines[0]["logger"] == "plumb.test"
    assert "ValueError" in lines[1]["exc"]
    assert lines[2]["level"] == "debug"


def test_level_filters_and_setup_twice_keeps_one_handler() -> None:
    out = emit("text", level="info")
    assert "detail" not in out
    stream = io.StringIO()
    logs.setup_logging("info", "text", stream)
    logs.setup_logging("info", "text", stream)
    logging.getLogger("x").warning("once")
    assert stream.getvalue().count("once") == 1


def test_set_and_step_level() -> None:
    logs.set_level("ERROR")
    assert logs.get_level() == "error"
    assert logs.step_level(1) == "warning"
    assert logs.step_level(5) == "debug"
    assert logs.step_level(-1) == "info"
    with pytest.raises(ValueError, match="verbose"):
        logs.set_level("verbose")


def test_signals_step_the_level() -> None:
    logs.setup_logging("info", "text", io.StringIO())
    old1, old2 = signal.getsignal(signal.SIGUSR1), signal.getsignal(signal.SIGUSR2)
    logs.install_signal_handlers()
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.05)
        assert logs.get_level() == "debug"
        os.kill(os.getpid(), signal.SIGUSR2)
        os.kill(os.getpid(), signal.SIGUSR2)
        time.sleep(0.05)
        assert logs.get_level() == "warning"
    finally:
        signal.signal(signal.SIGUSR1, old1)
        signal.signal(signal.SIGUSR2, old2)


def test_bad_format_is_refused() -> None:
    with pytest.raises(ValueError, match="xml"):
        logs.setup_logging("info", "xml")
