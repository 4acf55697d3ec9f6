"""The wire format between the native pool (server), its zygote and the pool's
children.

Each Unix socket connection starts with a ``Hello`` saying who is calling.
Control connections then carry length-prefixed frames: a 4-byte big-endian
length and a msgpack-encoded, tagged ``msgspec.Struct``.  Output connections
carry the raw bytes the child writes to its fds 1 and 2 after the ``Hello``.

This module is imported by the zygote, so it stays small: msgspec, the
standard library's ``struct`` and ``worker.runner`` (``JobInfo``) only.
"""

from __future__ import annotations

import struct

import msgspec

from edgedispatch.worker.runner import JobInfo as JobInfo  # re-exported: the zygote uses it

# A frame above this is a bug or a broken peer, not a job (tokens and room
# metadata are kilobytes).
MAX_FRAME = 16 << 20
_LEN = struct.Struct(">I")

#: Set (to "1") in a zygote's environment where the host gives no cgroups:
#: the zygote and its pool processes become subreapers (runtime/zygote.py).
SUBREAPER_ENV = "EDGEDISPATCH_POOL_SUBREAPER"


class Hello(msgspec.Struct, tag=True, frozen=True):
    """First frame on every connection.  ``role``: zygote, zygote-output,
    child (a child's control connection) or output (a child's fds 1 and 2)."""

    role: str
    pid: int


# zygote -> server


class Loaded(msgspec.Struct, tag=True, frozen=True):
    """The agent module imported; ``threads`` > 1 means forking is unsafe."""

    threads: int


class LoadFailed(msgspec.Struct, tag=True, frozen=True):
    reason: str


class Forked(msgspec.Struct, tag=True, frozen=True):
    pid: int


class ForkFailed(msgspec.Struct, tag=True, frozen=True):
    error: str


class Exited(msgspec.Struct, tag=True, frozen=True):
    """A child was reaped: ``code`` is its exit code, or -N for signal N."""

    pid: int
    code: int


# server -> zygote


class Fork(msgspec.Struct, tag=True, frozen=True):
    n: int


# child -> server


class Ready(msgspec.Struct, tag=True, frozen=True):
    """Prewarmed and waiting for a job."""


class Started(msgspec.Struct, tag=True, frozen=True):
    """The job arrived; from here a crash is the job's, not the pool's."""


class Failed(msgspec.Struct, tag=True, frozen=True):
    """Prewarm raised: ``error`` is the traceback.  The child exits."""

    error: str


class Done(msgspec.Struct, tag=True, frozen=True):
    """The job ended; the child exits with ``code`` right after.  ``error``
    is the entrypoint's traceback, or "".  (The zygote's ``Exited`` is the
    authority; this is what is known if the zygote is gone.)"""

    code: int
    error: str


# server -> child


class Go(msgspec.Struct, tag=True, frozen=True):
    """The server has put the child in its cell (its memory and process
    limits): it may run the agent's code (prewarm) now, not before."""


class Job(msgspec.Struct, tag=True, frozen=True):
    info: JobInfo


Message = (
    Hello
    | Loaded
    | LoadFailed
    | Forked
    | ForkFailed
    | Exited
    | Fork
    | Ready
    | Started
    | Failed
    | Done
    | Go
    | Job
)

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Message)


def encode(msg: Message) -> bytes:
    """One frame: length prefix and payload."""
    payload = _encoder.encode(msg)
    return _LEN.pack(len(payload)) + payload


class FrameReader:
    """Splits a byte stream into messages; keeps what follows for ``rest``."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes, limit: int = -1) -> list[Message]:
        """Add ``data`` and decode up to ``limit`` complete frames (-1: all).

        Raises ``ValueError`` on an oversized frame and
        ``msgspec.DecodeError`` on a malformed one."""
        self._buf += data
        out: list[Message] = []
        pos = 0
        buf = self._buf
        while len(out) != limit and len(buf) - pos >= 4:
            (size,) = _LEN.unpack_from(buf, pos)
            if size > MAX_FRAME:
                raise ValueError(f"frame of {size} bytes")
            if len(buf) - pos - 4 < size:
                break
            # A bytearray slice is a copy: no buffer export outlives the loop
            # (the ``del`` below could not resize an exported buffer).
            out.append(_decoder.decode(buf[pos + 4 : pos + 4 + size]))
            pos += 4 + size
        del buf[:pos]
        return out

    def rest(self) -> bytes:
        """The undecoded bytes, emptying the buffer."""
        data = bytes(self._buf)
        self._buf.clear()
        return data
