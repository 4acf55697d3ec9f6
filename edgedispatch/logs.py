"""Logging set-up: text for people, or one JSON object per line.

Log calls pass ids as ``extra`` (``room``, ``dispatch``, ``job``,
``worker``); both formats print them as fields.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import msgspec

FIELDS = ("room", "dispatch", "job", "worker", "agent", "reason", "tenant")


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
            f"{name}={record.__dict__[name]}"
            for name in FIELDS
            if record.__dict__.get(name) is not None
        )
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        line = f"{stamp}.{int(record.msecs):03d} {record.levelname:<7} {record.getMessage()}"
        if fields:
            line += f"  {fields}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def setup(level: str = "info", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger("edgedispatch")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
