"""SIP over UDP and TCP, driven by sipp (Debian's sip-tester): what a trunk or a
prober sees from the server today."""

from __future__ import annotations

import shutil
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import ServerThread

SCENARIOS = Path(__file__).resolve().parents[1] / "sip"
pytestmark = pytest.mark.skipif(not shutil.which("sipp"), reason="sipp (sip-tester) missing")


def free_port() -> int:
    """A port free for both UDP and TCP (sipp binds its -p in both)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port: int = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port


def sipp(
    srv: ServerThread, scenario: str, calls: int = 1, transport: str = "u1"
) -> subprocess.CompletedProcess[str]:
    """sipp's run of ``scenario``; ``transport``: u1 (UDP) or t1 (TCP)."""
    return subprocess.run(
        ["sipp", f"127.0.0.1:{srv.server.sip_port}", "-sf", str(SCENARIOS / scenario),
         "-m", str(calls), "-i", "127.0.0.1", "-p", str(free_port()), "-nostdin",
         "-t", transport, "-timeout", "15s", "-timeout_error", "-max_recv_loops", "1000",
         "-r", "50"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


@pytest.mark.parametrize("transport", ["u1", "t1"], ids=["udp", "tcp"])
def test_options_is_answered_200_with_allow(
    start_server: Callable[..., ServerThread], transport: str
) -> None:
    srv = start_server(sip={"enabled": True, "port": 0})
    done = sipp(srv, "options.xml", calls=5, transport=transport)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]


@pytest.mark.parametrize("transport", ["u1", "t1"], ids=["udp", "tcp"])
def test_a_call_no_trunk_takes_is_refused_404_and_acked(
    start_server: Callable[..., ServerThread], transport: str
) -> None:
    srv = start_server(sip={"enabled": True, "port": 0})
    done = sipp(srv, "invite_refused.xml", calls=10, transport=transport)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    # A refused call keeps no record (its transaction absorbs late copies).
    endpoint = srv.server.sip_endpoint
    assert endpoint is not None and endpoint.uas is not None
    assert srv.call(lambda: len(endpoint.uas.calls)) == 0  # type: ignore[union-attr]
