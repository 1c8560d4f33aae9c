"""Structured logging for the agent: one line per record on stderr, level changeable at run time.

Built on stdlib `logging`, so every module keeps `log = logging.getLogger(__name__)` and passes
fields as `extra`::

    log.info("watch restarted", extra={"kind": "Pod", "rv": "1234"})

Formats: `text` is logfmt (`time=... level=info logger=... msg="watch restarted" kind=Pod`),
`json` is one JSON object per line. Exceptions become one escaped `exc` field, so a traceback
never splits a record over lines.

The level changes at run time with `set_level` (the health server's `POST /loglevel` calls it),
and with SIGUSR1 (one step more verbose) and SIGUSR2 (one step less) once
`install_signal_handlers` has run in the main thread.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import time
from types import FrameType
from typing import Any, TextIO

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
_ORDER = ["error", "warning", "info", "debug"]  # least to most verbose

# Attributes every LogRecord has; anything else on a record came in through `extra`.
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}

# Libraries whose DEBUG output is a firehose (the Kubernetes client logs whole response bodies).
_NOISY = ("kubernetes", "urllib3")

_handler: logging.Handler | None = None


def _timestamp(record: logging.LogRecord) -> str:
    whole = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{whole}.{int(record.msecs):03d}Z"


def record_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The structured fields of a record: time, level, logger, msg, then extras, then exc."""
    fields: dict[str, Any] = {
        "time": _timestamp(record),
        "level": record.levelname.lower(),
        "logger": record.name,
        "msg": record.getMessage(),
    }
    for key, value in record.__dict__.items():
        if key not in _RECORD_ATTRS and not key.startswith("_"):
            fields[key] = value
    if record.exc_info:
        fields["exc"] = logging.Formatter().formatException(record.exc_info)
    elif record.exc_text:
        fields["exc"] = record.exc_text
    return fields


def _logfmt_value(value: Any) -> str:
    text = value if isinstance(value, str) else str(value)
    if text and all(c.isprintable() and c not in ' ="\\' for c in text):
        return text
    return json.dumps(text, ensure_ascii=False)  # quotes and escapes newlines, quotes, tabs


class KeyValueFormatter(logging.Formatter):
    """logfmt: key=value pairs, values quoted only when they need it."""

    def format(self, record: logging.LogRecord) -> str:
        fields = record_fields(record)
        return " ".join(f"{key}={_logfmt_value(value)}" for key, value in fields.items())


class JsonFormatter(logging.Formatter):
    """One JSON object per line; values that JSON cannot hold are written as strings."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(record_fields(record), default=str, ensure_ascii=False)


def _level_number(level: str) -> int:
    try:
        return LEVELS[level.lower()]
    except KeyError:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}; got {level!r}") from None


def setup_logging(level: str = "info", fmt: str = "text", stream: TextIO | None = None) -> None:
    """Send every record to `stream` (stderr) in `fmt` ("text" or "json") at `level`.

    Calling it again replaces the previous setup rather than adding a second handler.
    """
    global _handler
    if fmt not in ("text", "json"):
        raise ValueError(f"log format must be text or json; got {fmt!r}")
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else KeyValueFormatter())
    root.addHandler(handler)
    _handler = handler
    for name in _NOISY:
        logging.getLogger(name).setLevel(logging.WARNING)
    set_level(level)


def set_level(level: str) -> None:
    """Change the level of every logger of ours (the root's level) at once."""
    logging.getLogger().setLevel(_level_number(level))


def get_level() -> str:
    """The current level's name, e.g. "info"."""
    number = logging.getLogger().getEffectiveLevel()
    for name, value in LEVELS.items():
        if value == number:
            return name
    return logging.getLevelName(number).lower()


def step_level(steps: int) -> str:
    """Move `steps` towards debug (positive) or error (negative), stopping at either end."""
    current = get_level()
    index = _ORDER.index(current) if current in _ORDER else _ORDER.index("info")
    new = _ORDER[max(0, min(len(_ORDER) - 1, index + steps))]
    set_level(new)
    logging.getLogger(__name__).warning("log level changed", extra={"level": new})
    return new


def _on_signal(signum: int, frame: FrameType | None) -> None:
    step_level(1 if signum == signal.SIGUSR1 else -1)


def install_signal_handlers() -> None:
    """SIGUSR1: one level more verbose; SIGUSR2: one level less. Call from the main thread."""
    signal.signal(signal.SIGUSR1, _on_signal)
    signal.signal(signal.SIGUSR2, _on_signal)
