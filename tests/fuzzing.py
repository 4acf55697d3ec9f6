"""Hostile input for the fuzz tests (hypothesis): protobuf messages with
odd field values, their bytes mutated, JSON of the wrong shape; and how
many examples each test runs.

The default counts keep the suite within CI's budget.  A longer hunt:
``EDGEDISPATCH_FUZZ=long python -m pytest tests -k fuzz`` runs 50 times as
many examples of each.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

SCALE = {"long": 50}.get(os.environ.get("EDGEDISPATCH_FUZZ", ""), 1)


def fuzz_settings(examples: int) -> settings:
    """``examples`` in the default run (times SCALE), no deadline: a
    functional example waits on a real server."""
    return settings(
        max_examples=examples * SCALE,
        deadline=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
        ],
    )


#: Strings that have broken servers: control characters, line breaks, a
#: right-to-left override, a NUL, path tricks, and sizes over the limits
#: (metadata and attributes: 64 KiB; deployment: 64 bytes).
ODD_STRINGS = [
    "",
    " ",
    "\x00",
    "a\nb\r\nc",
    "\x1b[31m",
    "\u202e",
    "_",
    "../../etc/passwd",
    "%s%n{}",
    "é" * 40_000,
    "x" * 70_000,
    "d" * 65,
]

#: Integers at the edges of each protobuf width.
ODD_INTS = [0, 1, -1, 2**31 - 1, -(2**31), 2**32 - 1, 2**63 - 1, -(2**63), 2**64 - 1]


def text(pool: Sequence[str] = ()) -> st.SearchStrategy[str]:
    """Any string, an odd one, or one the test's world knows (a room, an
    id), so that calls get past their lookups too."""
    options = [st.text(max_size=30), st.sampled_from(ODD_STRINGS)]
    if pool:
        options.append(st.sampled_from(list(pool)))
    return st.one_of(*options)


_INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_ENUM: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}


def _scalar(field: FieldDescriptor, pool: Sequence[str]) -> st.SearchStrategy[Any]:
    t = field.type
    if t == FieldDescriptor.TYPE_STRING:
        return text(pool)
    if t == FieldDescriptor.TYPE_BYTES:
        return st.one_of(st.binary(max_size=40), st.just(b"\x00" * 70_000))
    if t == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if t in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        return st.floats(width=32 if t == FieldDescriptor.TYPE_FLOAT else 64)
    lo, hi = _INT_RANGES[t]
    edges = [v for v in ODD_INTS if lo <= v <= hi]
    if t == FieldDescriptor.TYPE_ENUM:
        # Known values most often, so that the call gets further.
        edges += [v.number for v in field.enum_type.values]
    return st.one_of(st.sampled_from(edges), st.integers(lo, hi))


@st.composite
def messages(
    draw: st.DrawFn, cls: type[Message], pool: Sequence[str] = (), depth: int = 3
) -> Message:
    """A ``cls`` with some of its fields set to odd values (nested messages
    down to ``depth``)."""
    msg = cls()
    _fill(draw, msg, cls.DESCRIPTOR, pool, depth)
    return msg


def _fill(draw: st.DrawFn, msg: Any, desc: Descriptor, pool: Sequence[str], depth: int) -> None:
    for field in desc.fields:
        if not draw(st.booleans()):
            continue
        sub = field.message_type
        repeated = field.is_repeated
        if sub is not None and sub.GetOptions().map_entry:
            key, value = sub.fields_by_name["key"], sub.fields_by_name["value"]
            if value.message_type is not None:
                continue  # no map of messages in the requests fuzzed
            entries = draw(st.dictionaries(_scalar(key, pool), _scalar(value, pool), max_size=4))
            getattr(msg, field.name).update(entries)
        elif sub is not None:
            if depth <= 0:
                continue
            if repeated:
                for _ in range(draw(st.integers(0, 2))):
                    _fill(draw, getattr(msg, field.name).add(), sub, pool, depth - 1)
            else:
                _fill(draw, getattr(msg, field.name), sub, pool, depth - 1)
                getattr(msg, field.name).SetInParent()
        elif repeated:
            getattr(msg, field.name).extend(draw(st.lists(_scalar(field, pool), max_size=4)))
        else:
            setattr(msg, field.name, draw(_scalar(field, pool)))


def aim(msg: Message, targets: dict[str, str]) -> None:
    """Point the message's names and ids at what exists, in it and in the
    messages set in it (its other fields stay odd): the calls get past
    their lookups."""
    for field, value in msg.ListFields():
        if field.message_type is not None and not field.message_type.GetOptions().map_entry:
            for sub in value if field.is_repeated else [value]:
                aim(sub, targets)
    for name, target in targets.items():
        field = msg.DESCRIPTOR.fields_by_name.get(name)
        if field is None or field.type != FieldDescriptor.TYPE_STRING:
            continue
        if field.is_repeated:
            getattr(msg, name).append(target)
        else:
            setattr(msg, name, target)


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` cut short, with bytes flipped, inserted or appended."""
    kind = draw(st.sampled_from(["truncate", "flip", "insert", "append", "same"]))
    if kind == "truncate" and data:
        return data[: draw(st.integers(0, len(data) - 1))]
    if kind == "flip" and data:
        i = draw(st.integers(0, len(data) - 1))
        return data[:i] + bytes([data[i] ^ draw(st.integers(1, 255))]) + data[i + 1 :]
    if kind == "insert":
        i = draw(st.integers(0, len(data)))
        return data[:i] + draw(st.binary(min_size=1, max_size=8)) + data[i:]
    if kind == "append":
        return data + draw(st.binary(min_size=1, max_size=16))
    return data


#: Any JSON value, nested a little.
json_values: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=10), children, max_size=3)
    ),
    max_leaves=10,
)


def deep_json(depth: int, opener: str = "[") -> bytes:
    """A JSON text nested ``depth`` levels (a parser's recursion)."""
    if opener == "{":
        return ('{"a":' * depth + "1" + "}" * depth).encode()
    return ("[" * depth + "]" * depth).encode()
