"""``edgedispatch bench churn``: does memory come back after rooms go?

Starts ``edgedispatch serve``, creates and deletes a small warm-up of rooms
(so that lazily imported code and first-use caches count in the baseline,
not as growth), takes the baseline RSS, then creates N rooms through
Twirp's RoomService.CreateRoom and deletes them all with DeleteRoom (in
waves of ``--batch`` rooms alive at once; by default all N exist at the
peak, as in the report this bench was written for).  With ``--dispatch``
each room is created with an agent dispatch (no worker takes it: the job queues
and is cancelled with its room), so that jobs churn as well.

It reports the baseline, the peak (VmHWM) and the RSS after the rooms are
gone and the server has idled ``--settle`` seconds, and the ratio
after / baseline against the target.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import uvloop
from livekit.protocol import agent_dispatch
from livekit.protocol import room as room_pb

from edgedispatch.cli.bench.common import read_response, start_server, stop
from edgedispatch.config import DEV_KEY, DEV_SECRET
from edgedispatch.wire.tokens import sign_hs256

SERVICE = "/twirp/livekit.RoomService/"
CONNECTIONS = 32
WARMUP = 1000

#: RSS after the churn, over the baseline.
TARGET_RATIO = 1.20


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM... of ``pid`` in kB."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Vm"):
                name, value = line.split(":", 1)
                out[name] = int(value.split()[0])
    return out


def _token() -> str:
    """The dev key's token for creating and deleting any room, and for
    nothing else."""
    now = int(time.time())
    claims = {
        "iss": DEV_KEY,
        "nbf": now,
        "exp": now + 24 * 3600,
        "video": {"roomCreate": True},
    }
    return sign_hs256(claims, DEV_SECRET)


class Churner:
    """Creates rooms (with a dispatch in each, if asked), or deletes them,
    over CONNECTIONS keep-alive connections."""

    def __init__(self, host: str, port: int, dispatch: bool) -> None:
        self.host, self.port, self.dispatch = host, port, dispatch
        self.errors = 0
        token = _token()
        self._head = (
            f"Host: {host}\r\nContent-Type: application/protobuf\r\n"
            f"Authorization: Bearer {token}\r\n"
        )

    def _request(self, path: str, body: bytes) -> bytes:
        return (
            f"POST {path} HTTP/1.1\r\n{self._head}Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body

    def _create(self, name: str) -> list[bytes]:
        # The dispatch rides in CreateRoom (RoomConfiguration's agents), so
        # that one admin token serves every room.
        agents = [agent_dispatch.RoomAgentDispatch(agent_name="churn", metadata="churn")]
        req = room_pb.CreateRoomRequest(name=name, agents=agents if self.dispatch else [])
        return [self._request(SERVICE + "CreateRoom", req.SerializeToString())]

    def _delete(self, name: str) -> list[bytes]:
        body = room_pb.DeleteRoomRequest(room=name).SerializeToString()
        return [self._request(SERVICE + "DeleteRoom", body)]

    async def _run(self, names: list[str], build: Callable[[str], list[bytes]]) -> None:
        it = iter(names)

        async def connection() -> None:
            reader, writer = await asyncio.open_connection(self.host, self.port)
            try:
                for name in it:
                    for request in build(name):
                        writer.write(request)
                        head, _ = await read_response(reader)
                        if not head.startswith(b"HTTP/1.1 200"):
                            self.errors += 1
            finally:
                writer.close()

        await asyncio.gather(*(connection() for _ in range(CONNECTIONS)))

    def create(self, names: list[str]) -> None:
        uvloop.run(self._run(names, self._create))

    def delete(self, names: list[str]) -> None:
        uvloop.run(self._run(names, self._delete))


def run(
    rooms: int = 100_000,
    batch: int = 0,
    dispatch: bool = False,
    settle: float = 5.0,
    loop: str = "uvloop",
    python: list[str] | None = None,
) -> dict[str, Any]:
    """:param batch: rooms alive at once (0: all of them).
    :param settle: seconds the server idles before the RSS after is read."""
    server, url = start_server("--log-format", "json", "--loop", loop, python=python)
    try:
        host, port = url.removeprefix("http://").split(":")
        churner = Churner(host, int(port), dispatch)
        warm = [f"warmup-{i}" for i in range(WARMUP)]
        churner.create(warm)
        churner.delete(warm)
        time.sleep(settle)
        baseline = proc_status(server.pid)["VmRSS"]
        started = time.monotonic()
        wave = batch or rooms
        for first in range(0, rooms, wave):
            names = [f"churn-{i}" for i in range(first, min(rooms, first + wave))]
            churner.create(names)
            churner.delete(names)
        took = time.monotonic() - started
        peak = proc_status(server.pid)["VmHWM"]
        time.sleep(settle)
        after = proc_status(server.pid)["VmRSS"]
    finally:
        stop(server, timeout=10)
    ratio = after / baseline if baseline else float("nan")
    return {
        "rooms": rooms,
        "batch": wave,
        "dispatch": dispatch,
        "warmup_rooms": WARMUP,
        "errors": churner.errors,
        "churn_s": round(took, 2),
        "rooms_per_s": round(rooms / took, 1) if took > 0 else 0.0,
        "settle_s": settle,
        "rss_mb": {
            "baseline": round(baseline / 1024, 1),
            "peak": round(peak / 1024, 1),
            "after": round(after / 1024, 1),
        },
        "ratio": round(ratio, 3),
        "target_ratio": TARGET_RATIO,
        "ok": ratio <= TARGET_RATIO,
    }


def render(r: dict[str, Any]) -> str:
    from edgedispatch.cli.tables import markdown_table

    rss = r["rss_mb"]
    what = "rooms, each with a dispatch," if r["dispatch"] else "rooms"
    header = ("rooms", "alive at once", "rooms/s", "errors", "RSS baseline MB", "peak MB",
              "after MB", "after / baseline")  # fmt: skip
    row = [r["rooms"], r["batch"], r["rooms_per_s"], r["errors"], rss["baseline"], rss["peak"],
           rss["after"], r["ratio"]]  # fmt: skip
    return "\n".join(
        [
            markdown_table(header, [row]),
            "",
            f"{r['rooms']:,} {what} created and deleted, {r['batch']:,} alive at once: "
            f"{r['churn_s']} s ({r['rooms_per_s']:,} rooms/s), {r['errors']} errors",
            f"server RSS: baseline {rss['baseline']} MB (after start-up and a warm-up of "
            f"{r['warmup_rooms']:,} rooms created and deleted), peak {rss['peak']} MB, "
            f"after {rss['after']} MB ({r['settle_s']:g} s idle)",
            f"after / baseline: {r['ratio']} (target <= {r['target_ratio']}): "
            + ("met" if r["ok"] else "NOT met"),
        ]
    )
