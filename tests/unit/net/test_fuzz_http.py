"""Fuzzed HTTP bytes into ``net.http.HttpProtocol`` in front of the real
app, on a MockTransport: requests cut, mutated, pipelined and split at odd
places, with odd methods, paths and headers.  The protocol never raises,
answers what it answers with a well-formed response that is not a 5xx, and
a clean connection is served normally afterwards."""

from __future__ import annotations

import asyncio
import json
import time

from hypothesis import given
from hypothesis import strategies as st

from edgedispatch._testbase.mock_transport import MockTransport
from edgedispatch.net.http import HttpProtocol
from tests.fuzzing import fuzz_settings, mutated
from tests.unit.test_fuzz_twirp import World, token

LIST_ROOMS = "/twirp/livekit.RoomService/ListRooms"


def request(method: str, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    head = [f"{method} {path} HTTP/1.1", "Host: edge", f"Content-Length: {len(body)}"]
    head += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode("utf-8", "surrogateescape") + body


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    method = draw(st.sampled_from(["POST", "GET", "PUT", "OPTIONS", "PATCH"]))
    path = draw(
        st.sampled_from(
            [LIST_ROOMS, "/twirp/livekit.RoomService/Nope", "/twirp/", "/agent", "/rtc/validate"]
            + ["/twirp/edgedispatch.AgentService/ListAgents", "/", "/readyz", "/%00", "/a?b=%zz"]
        )
    )
    headers = {
        "Content-Type": draw(st.sampled_from(["application/json", "application/protobuf", ""])),
        "Authorization": draw(st.sampled_from([f"Bearer {token('r1')}", "Bearer x", "Basic a"])),
    }
    headers.update(draw(st.dictionaries(st.sampled_from(["Upgrade", "Connection", "X-A"]),
                                        st.sampled_from(["websocket", "close", "keep-alive", "é"]),
                                        max_size=2)))  # fmt: skip
    body = draw(st.sampled_from([b"{}", b"", b"\x00\xff", b"[" * 3000]))
    data = request(method, path, body, headers)
    return draw(mutated(data)) if draw(st.booleans()) else data


class Transport(MockTransport):
    """Drops what is written after close, as asyncio's and uvloop's do (a
    request pipelined after ``Connection: close`` is refused after it)."""

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self.closed:
            super().write(data)


def statuses(raw: bytes) -> list[int]:
    """The status of each response in ``raw``."""
    return [int(chunk[:3]) for chunk in raw.split(b"HTTP/1.1 ")[1:] if chunk[:3].isdigit()]


@given(st.lists(requests(), min_size=1, max_size=4), st.integers(1, 64))
@fuzz_settings(100)
def test_fuzzed_http_bytes_are_answered_without_a_5xx(stream: list[bytes], cut: int) -> None:
    world = World()

    async def main() -> None:
        # The tokens' wall clock, from the loop's time the requests carry.
        world.domain.wall.offset = time.time() - asyncio.get_running_loop().time()
        transport = Transport()
        protocol = HttpProtocol(world.app, 1 << 20, set())  # type: ignore[arg-type]
        transport.connect(protocol)
        data = b"".join(stream)
        for i in range(0, len(data), cut):  # split at odd places
            if transport.closed:
                break
            protocol.data_received(data[i : i + cut])
        await asyncio.sleep(0)
        out = transport.take()
        assert all(status < 500 for status in statuses(out)), out[:500]

        clean = Transport()
        protocol = HttpProtocol(world.app, 1 << 20, set())  # type: ignore[arg-type]
        clean.connect(protocol)
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token('r1')}"}
        protocol.data_received(request("POST", LIST_ROOMS, b"{}", headers))
        answer = clean.take()
        assert statuses(answer) == [200], answer[:300]
        assert "rooms" in json.loads(answer.split(b"\r\n\r\n", 1)[1])

    asyncio.run(main())
