"""A participant's data channels (``net.media``): the channels the SDKs
open, by the DataPacket.Kind their label stands for, the packets for the
participant kept until a channel is open, and the packets it sends, handed
on with the time they came.

The channels open a moment after the participant's connect() returns, and
the room may send it data meanwhile: those packets wait here, a bounded
number, and go out in their order as soon as a channel opens.

No aiortc here (``net.media`` owns it): a channel is reached through
``Channel``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Protocol

#: DataPacket.Kind by the data channel labels the SDKs open.
CHANNEL_KINDS = {"_reliable": 0, "_lossy": 1}
#: Packets kept for a participant whose data channel is not open yet (its
#: connect() returns once ICE is up, a moment before the channels open);
#: beyond this the oldest go.
EARLY_PACKETS = 256

#: What a participant's packet goes to: (payload, kind, the loop's time).
OnData = Callable[[bytes, int, float], None]


class Channel(Protocol):
    """The part of aiortc's ``RTCDataChannel`` used here."""

    @property
    def label(self) -> str: ...

    @property
    def readyState(self) -> str: ...

    def send(self, data: bytes) -> None: ...


class DataChannels:
    """One participant's channels.  ``on_data`` gets the packets it sends;
    ``clock`` is the loop's time."""

    def __init__(self, on_data: OnData, clock: Callable[[], float]) -> None:
        self._on_data = on_data
        self._clock = clock
        self._channels: dict[int, Channel] = {}
        self._early: deque[tuple[bytes, int]] = deque(maxlen=EARLY_PACKETS)
        self._closed = False

    def send(self, packet: bytes, kind: int) -> None:
        """On the channel of ``kind`` (or the reliable one), or kept until
        one opens."""
        channel = self._channels.get(kind) or self._channels.get(0)
        if channel is not None and channel.readyState == "open":
            channel.send(packet)
        elif not self._closed:
            self._early.append((packet, kind))

    def opened(self, channel: Channel) -> int | None:
        """A channel the participant opened: its kind, once the packets
        kept for it are sent; None for a channel not forwarded."""
        kind = CHANNEL_KINDS.get(channel.label)
        if kind is None:
            return None  # _data_track and anything newer: not forwarded
        self._channels[kind] = channel
        early, self._early = self._early, deque(maxlen=EARLY_PACKETS)
        for packet, packet_kind in early:
            self.send(packet, packet_kind)
        return kind

    def received(self, kind: int, message: bytes | str) -> None:
        """A message on the channel of ``kind``: only binary ones are packets."""
        if isinstance(message, bytes):
            self._on_data(message, kind, self._clock())

    def close(self) -> None:
        """The participant's media closed: nothing more is kept for it."""
        self._closed = True
