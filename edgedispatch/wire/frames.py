"""Frames between the server and its helper processes (the media workers'
link, the store's writer): a 4-byte big-endian length, then a msgpack list.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any

import msgspec

_LEN = struct.Struct(">I")
_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(list[Any]).decode


def frame(item: list[Any]) -> bytes:
    body = _encode(item)
    return _LEN.pack(len(body)) + body


class FrameReader:
    """Bytes in, whole frames out.  A frame over ``max_frame`` bytes, or one
    that is not a msgpack list, raises ``ValueError``: the peer is broken."""

    def __init__(self, max_frame: int) -> None:
        self.max_frame = max_frame
        self._buffer = bytearray()

    def feed(self, data: bytes) -> Iterator[list[Any]]:
        buf = self._buffer
        buf += data
        while len(buf) >= 4:
            (size,) = _LEN.unpack_from(buf)
            if size > self.max_frame:
                raise ValueError(f"a frame of {size} bytes")
            if len(buf) < 4 + size:
                return
            body = bytes(buf[4 : 4 + size])
            del buf[: 4 + size]
            yield _decode(body)  # msgspec.DecodeError is a ValueError
