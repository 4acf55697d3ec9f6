"""The link between the server and a media worker process: one Unix
socket pair, frames of a 4-byte length and a msgpack list ``[op, ...]``.

Both ends use ``MediaLink``, an asyncio protocol that hands each whole frame
to a callback and writes frames back; nothing here imports aiortc.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
from collections.abc import Callable
from typing import Any, Protocol, cast

from edgedispatch.wire.frames import FrameReader, frame

log = logging.getLogger("edgedispatch.media")

#: The aiortc release net/media.py's private attributes were verified on.
AIORTC_VERSION = "1.16.0"
#: The worker's environment: its end of the socket pair, the rtc config, and
#: the level and format of the server's logs ("info,json"), which it logs in.
FD_ENV = "EDGEDISPATCH_MEDIA_FD"
CONFIG_ENV = "EDGEDISPATCH_MEDIA_CONFIG"
LOG_ENV = "EDGEDISPATCH_MEDIA_LOG"
#: A frame larger than this ends the link: the peer is broken.
MAX_FRAME = 4 * 1024 * 1024


def aiortc_problem() -> str:
    """Why rooms cannot be served here ("" if they can), without importing
    aiortc (the server process need not load it)."""
    try:
        found = importlib.metadata.version("aiortc")
    except importlib.metadata.PackageNotFoundError:
        return "aiortc is not installed"
    if found != AIORTC_VERSION:
        return f"rooms need aiortc {AIORTC_VERSION}, found {found}"
    return ""


class MediaLink(asyncio.Protocol):
    """:param on_frame: called with each frame's list.
    :param on_lost: called once when the link ends."""

    def __init__(self, on_frame: Callable[[list[Any]], None], on_lost: Callable[[], None]) -> None:
        self._on_frame = on_frame
        self._on_lost = on_lost
        self._transport: asyncio.Transport | None = None
        self._reader = FrameReader(MAX_FRAME)
        self._pending: list[bytes] = []  # written before the connection was made

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses: no isinstance.
        self._transport = cast(asyncio.Transport, transport)
        for data in self._pending:
            self._transport.write(data)
        self._pending.clear()

    def send(self, *item: Any) -> None:
        data = frame(list(item))
        if self._transport is None:
            self._pending.append(data)
        elif not self._transport.is_closing():
            self._transport.write(data)

    def data_received(self, data: bytes) -> None:
        try:
            for item in self._reader.feed(data):
                self._on_frame(item)
        except ValueError as exc:  # too large, or not msgpack
            log.error("media link frame is broken (%s): closing the link", exc)
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._on_lost()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


class MediaEvents(Protocol):
    """What a participant's signal session takes back (``rtc.session``)."""

    def fields(self) -> dict[str, object]:
        """The ``extra`` of a log line about this participant (``obs.logs``):
        its room, identity and tenant."""
        ...

    def on_answer(self, sdp: str, offer_id: int, mid_to_track: dict[str, str]) -> None: ...

    def on_track_received(self, track_sid: str, mid: str) -> None: ...

    def on_track_unpublished(self, track_sid: str) -> None:
        """The client's offer no longer sends a published track."""
        ...

    def request_offer(self, num_audios: int, num_videos: int) -> None: ...

    def on_offer(self, sdp: str, offer_id: int) -> None:
        """v0: the server's offer for the subscriber connection."""
        ...

    @property
    def single_pc(self) -> bool: ...

    def on_data(self, payload: bytes, kind: int, now: float) -> None: ...

    def on_media_failed(self, why: str, now: float) -> None: ...

    def on_offer_refused(self, offer_id: int, why: str) -> None:
        """The client's offer could not be taken (malformed SDP, say)."""
        ...
