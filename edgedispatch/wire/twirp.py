"""Twirp over HTTP/1.1, sans-IO: request bodies in, messages out, and back.

Both encodings LiveKit's SDKs use: binary protobuf (``application/protobuf``,
the Python and Go SDKs) and protobuf-JSON (``application/json``, the Node
SDK).  A response uses the request's encoding.  Errors are always JSON
``{"code", "msg", "meta"}`` with a Content-Type of exactly
``application/json`` (the Node SDK checks it to the byte).
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message

from edgedispatch.errors import EdgeDispatchError, Malformed, TwirpError

PROTOBUF = "application/protobuf"
JSON = "application/json"

#: Twirp error code → HTTP status.
STATUS = {
    "canceled": 408,
    "invalid_argument": 400,
    "malformed": 400,
    "deadline_exceeded": 408,
    "not_found": 404,
    "bad_route": 404,
    "already_exists": 409,
    "permission_denied": 403,
    "unauthenticated": 401,
    "resource_exhausted": 429,
    "failed_precondition": 412,
    "aborted": 409,
    "out_of_range": 400,
    "unimplemented": 501,
    "internal": 500,
    "unavailable": 503,
    "dataloss": 500,
    "unknown": 500,
}

M = TypeVar("M", bound=Message)

__all__ = ["JSON", "PROTOBUF", "STATUS", "TwirpError", "decode", "encode", "encoding_of"]


def encoding_of(content_type: str) -> str:
    """PROTOBUF or JSON for a request's Content-Type; TwirpError otherwise."""
    base = content_type.split(";", 1)[0].strip().lower()
    if base in (PROTOBUF, "application/x-protobuf"):
        return PROTOBUF
    if base == JSON:
        return JSON
    raise TwirpError("bad_route", f"unexpected Content-Type: {content_type or '(none)'}")


def decode(body: bytes, encoding: str, cls: type[M]) -> M:
    """Parse a request body; ``malformed`` if it is not a valid ``cls``."""
    msg = cls()
    try:
        if encoding == PROTOBUF:
            msg.ParseFromString(body)
        else:
            json_format.Parse(body or b"{}", msg, ignore_unknown_fields=True)
    except (DecodeError, json_format.ParseError, UnicodeDecodeError, ValueError) as exc:
        kind = "protobuf" if encoding == PROTOBUF else "JSON"
        raise Malformed(
            f"the request body is not a valid {kind} {cls.DESCRIPTOR.name}: {exc}"
        ) from exc
    return msg


# Enum values newer than what the Node SDK's protocol package knows.  Its
# JSON parser reads an unknown enum *name* as 0 (a cancelled job would look
# pending) but keeps an unknown *number*, so these go out as numbers.
_NUMERIC_IN_JSON = {"JS_CANCELLED": 4}


def _numeric_enums(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: _NUMERIC_IN_JSON.get(v, v)
            if k == "status" and isinstance(v, str)
            else _numeric_enums(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_numeric_enums(v) for v in value]
    return value


def encode(msg: Message, encoding: str) -> bytes:
    if encoding == PROTOBUF:
        return msg.SerializeToString()
    data: dict[str, Any] = json_format.MessageToDict(msg)
    return msgspec.json.encode(_numeric_enums(data))


def error_body(exc: EdgeDispatchError) -> tuple[int, bytes]:
    """HTTP status and JSON body for any of our errors."""
    code = exc.twirp_code if exc.twirp_code in STATUS else "internal"
    meta = {k: str(v) for k, v in exc.meta.items()}
    return STATUS[code], msgspec.json.encode(
        {"code": code, "msg": exc.msg or str(exc), "meta": meta}
    )
