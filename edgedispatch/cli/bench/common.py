"""What the ``bench`` commands share: a server started as a process on a
free port, the dev key's admin token, reading one HTTP response off a
keep-alive connection, and percentiles."""

from __future__ import annotations

import asyncio
import math
import os
import re
import socket
import subprocess
import sys
import time
from typing import IO, Any

from edgedispatch.config import DEV_KEY, DEV_SECRET
from edgedispatch.wire.tokens import sign_hs256


def start_server(
    *args: str, python: list[str] | None = None, stderr: int | IO[str] = subprocess.DEVNULL
) -> tuple[subprocess.Popen[str], str]:
    """``edgedispatch serve --dev --port 0 ARGS``; returns it and its URL.
    :param python: how to start its interpreter (e.g. under a profiler)."""
    server = subprocess.Popen(
        [
            *(python or [sys.executable]),
            "-m",
            "edgedispatch",
            "serve",
            "--dev",
            "--port",
            "0",
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert server.stdout is not None
    line = server.stdout.readline()
    match = re.search(r"(http://\S+)", line)
    if not match:
        stop(server)
        raise RuntimeError(f"the server did not start: {line!r}")
    return server, match.group(1)


def free_port(udp_too: bool = False) -> int:
    """A loopback TCP port free now; with ``udp_too``, free for UDP as well
    (a SIP port, or sipp's own, which it binds in both)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port: int = tcp.getsockname()[1]
            if not udp_too:
                return port
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port


def free_media_port() -> int:
    """A loopback UDP port for sipp's media (``-mp``), free now with the one
    two above it: sipp binds that one too, for video, and fails the call if
    it is taken (as it was by another server's RTP, once in a test run)."""
    while True:
        port = free_port(udp_too=True)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as video:
            try:
                video.bind(("127.0.0.1", port + 2))
            except OSError:
                continue
            return port


def stop(proc: subprocess.Popen[Any], timeout: float = 20.0) -> None:
    """SIGTERM, and SIGKILL if it has not exited within ``timeout``."""
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def admin_token(room: str, ttl: int = 3600) -> str:
    """The dev key's token for dispatch calls on ``room``."""
    now = int(time.time())
    claims = {
        "iss": DEV_KEY,
        "nbf": now,
        "exp": now + ttl,
        "video": {"roomAdmin": True, "room": room},
    }
    return sign_hs256(claims, DEV_SECRET)


def agent_join_token(key: str, secret: str, index: int, room: str) -> str:
    """The join token of the ``index``-th bench agent (kind agent) for
    ``room``, made as an agent's is (livekit-api's AccessToken)."""
    from livekit import api  # the bench extra; only the agents need it

    return (
        api.AccessToken(key, secret)
        .with_identity(f"agent-{index}")
        .with_kind("agent")
        .with_grants(api.VideoGrants(room_join=True, room=room))
        .to_jwt()
    )


async def read_response(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One HTTP/1.1 response with a Content-Length: (head, body)."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = re.search(rb"(?i)content-length: *(\d+)", head)
    return head, await reader.readexactly(int(length.group(1)) if length else 0)


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (nearest rank) of ``values``; NaN if empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
