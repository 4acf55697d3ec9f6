"""The fan-out of a published track to its subscribers' forwarding tracks,
with aiortc's real track class and fake packets, on a fake clock."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from edgedispatch.net.media import FORWARD_QUEUE, ForwardTrack
from edgedispatch.net.media_fanout import CLOSED_TOTALS, Fanout, VideoFanout

KEY, DELTA = b"\x00key", b"\x01delta"


@dataclass
class Rtp:
    sequence_number: int
    timestamp: int
    marker: int
    payload: bytes


def frame(seq: int, ts: int, data: bytes) -> Rtp:
    return Rtp(seq, ts, 1, b"\x10" + data)  # one packet: S, partition 0, marker


def drain(track: ForwardTrack) -> list[bytes]:
    return [bytes(track._queue.popleft()) for _ in range(len(track._queue))]


def test_video_goes_to_each_subscriber_from_a_keyframe_on() -> None:
    async def main() -> None:
        now = [0.0]
        fanout = VideoFanout("TR_cam", lambda: now[0])
        first = ForwardTrack(fanout)
        assert fanout.add(frame(1, 0, KEY)) == (False, None)
        assert fanout.add(frame(2, 3000, DELTA)) == (False, None)
        assert drain(first) == [KEY, DELTA]
        late = ForwardTrack(fanout)  # starts mid-stream: needs a keyframe
        now[0] = 1.0
        pli, _ = fanout.add(frame(3, 6000, DELTA))
        assert pli  # asked of the publisher at once
        assert drain(late) == [] and drain(first) == [DELTA]
        fanout.add(frame(4, 9000, KEY))
        fanout.add(frame(5, 12000, DELTA))
        assert drain(late) == [KEY, DELTA]
        late.keyframe_requested()  # the subscriber's PLI, relayed...
        now[0] = 1.2
        assert fanout.add(frame(6, 15000, DELTA))[0] is False  # ...not twice in 0.5 s
        now[0] = 1.6
        assert fanout.add(frame(7, 18000, DELTA))[0] is True
        assert fanout.received == 7 and fanout.lost == 0

    asyncio.run(main())


def test_a_lagging_video_subscriber_starts_again_at_a_keyframe() -> None:
    async def main() -> None:
        fanout = VideoFanout("TR_cam", lambda: 0.0)
        track = ForwardTrack(fanout)
        fanout.add(frame(1, 0, KEY))
        for i in range(FORWARD_QUEUE + 2):  # its sender takes none
            fanout.add(frame(2 + i, 3000 * (i + 1), DELTA))
        assert drain(track) == []  # what it missed would break every frame after
        fanout.add(frame(100, 900000, KEY))
        assert drain(track) == [KEY]

    asyncio.run(main())


def test_audio_passes_packet_by_packet_and_drops_the_oldest_when_lagging() -> None:
    async def main() -> None:
        fanout = Fanout("TR_mic", lambda: 0.0)
        track = ForwardTrack(fanout)
        assert track.kind == "audio"
        for seq in (1, 2, 2, 1, 4):  # a duplicate, a late one, a gap
            fanout.add(Rtp(seq, seq * 960, 0, b"opus%d" % seq))
        assert drain(track) == [b"opus1", b"opus2", b"opus4"]
        assert (fanout.received, fanout.lost) == (3, 1)
        for seq in range(5, 5 + FORWARD_QUEUE + 3):
            fanout.add(Rtp(seq, seq * 960, 0, b"x"))
        assert len(drain(track)) == FORWARD_QUEUE

    asyncio.run(main())


def test_audio_presentation_times_grow_across_a_timestamp_wrap() -> None:
    async def main() -> list[int]:
        fanout = Fanout("TR_mic", lambda: 0.0)
        track = ForwardTrack(fanout)
        for seq, ts in ((1, 0xFFFFFE00), (2, 0xFFFFFFC0), (3, 0x80)):
            fanout.add(Rtp(seq, ts, 0, b"opus"))
        return [int(track._queue.popleft().pts or 0) for _ in range(3)]

    assert asyncio.run(main()) == [0, 0x1C0, 0x280]


def test_packet_counts_survive_a_closed_fanout_and_never_go_down() -> None:
    """/metrics' forwarded packets: one per subscriber; a fan-out closed
    (its track unpublished) hands its counts to the process's totals once."""

    async def main() -> None:
        before = list(CLOSED_TOTALS)
        fanout = Fanout("TR_mic", lambda: 0.0)
        ForwardTrack(fanout)
        ForwardTrack(fanout)
        for seq in range(1, 4):
            fanout.add(Rtp(seq, seq * 960, 0, b"opus"))
        fanout.add(Rtp(3, 2880, 0, b"opus"))  # a duplicate: neither counted nor sent
        assert (fanout.received, fanout.forwarded) == (3, 6)
        fanout.close()
        fanout.close()  # twice: counted once
        assert CLOSED_TOTALS == [before[0] + 3, before[1] + 6]

    asyncio.run(main())
