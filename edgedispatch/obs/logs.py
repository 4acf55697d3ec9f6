"""Logging set-up: text for people, or one JSON object per line.

Log calls pass ids as ``extra`` (``room``, ``participant``, ``call``,
``dispatch``, ``job``, ``worker``, ``agent``, ``instance``, ``tenant``...);
both formats print them as fields, named as in FIELDS.  A line about a
tenant's room, job, dispatch, worker, participant, call or agent names the
tenant too: the default tenant is named "", and a line of it says
``tenant=""`` (text) or ``"tenant": ""`` (JSON).  Records have helpers that
build the ``extra`` of a line about them (``dispatch.records.job_fields``).
"""

from __future__ import annotations

import atexit
import json
import logging
import sys
import time
from typing import Any

import msgspec

FIELDS = (
    "room",
    "participant",
    "call",
    "dispatch",
    "job",
    "worker",
    "agent",
    "instance",
    "reason",
    "peer",
    "tenant",
)


class DeferredStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Collects formatted lines and writes them in one call per ``flush()``.

    At thousands of jobs a second, one write system call per line is a
    measurable share of the server's time; the server flushes every
    FLUSH_INTERVAL (and a warning or worse goes out at once)."""

    FLUSH_INTERVAL = 0.1

    def __init__(self) -> None:
        super().__init__(sys.stderr)
        self._lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._lines.append(self.format(record))
        except Exception:
            self.handleError(record)
        if record.levelno >= logging.WARNING or len(self._lines) >= 512:
            self.flush()

    def flush(self) -> None:
        if self._lines:
            text = "\n".join(self._lines) + "\n"
            self._lines.clear()
            try:
                self.stream.write(text)
                self.stream.flush()
            except (OSError, ValueError):
                pass


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name in FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                out[name] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return msgspec.json.encode(out).decode()


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(
            f"{name}={_text_value(record.__dict__[name])}"
            for name in FIELDS
            if record.__dict__.get(name) is not None
        )
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        message = _escape(record.getMessage())
        line = f"{stamp}.{int(record.msecs):03d} {record.levelname:<7} {message}"
        if fields:
            line += f"  {fields}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def _text_value(value: object) -> object:
    """A field's value: quoted (JSON-style) when it is empty or has a space,
    a quote or an ``=`` in it, so that a name cannot pose as another field."""
    if not isinstance(value, str):
        return value
    if value == "" or any(c in value for c in ' "='):
        return json.dumps(value, ensure_ascii=False).translate(_CONTROLS)
    return _escape(value)


#: Control characters, as escapes: a room name with a newline in it must
#: not start a line of its own (a forged log line).  JSON lines escape them
#: already.
_CONTROLS = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7F]}
_CONTROLS.update({ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"})
_CONTROLS.update({c: f"\\u{c:04x}" for c in (0x85, 0x2028, 0x2029)})  # line breaks too


def _escape(text: str) -> str:
    return text.translate(_CONTROLS) if not text.isprintable() else text


_settings = ("info", "text")


def settings() -> tuple[str, str]:
    """The level and format ``setup`` was given (the server's helper
    processes log as it does)."""
    return _settings


def setup(level: str = "info", fmt: str = "text") -> None:
    global _settings
    _settings = (level, fmt)
    # Neither format prints the caller, thread or process, so do not collect
    # them: each costs a stack walk or a system call per record.  (Setting
    # _srcfile to None is the logging docs' own advice for this.)
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = DeferredStreamHandler()
    atexit.register(handler.flush)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger("edgedispatch")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


def flush() -> None:
    """Write out buffered log lines (the server calls this periodically)."""
    for handler in logging.getLogger("edgedispatch").handlers:
        handler.flush()
