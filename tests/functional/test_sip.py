"""SIP over UDP, driven by sipp (Debian's sip-tester): what a trunk or a
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


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def sipp(srv: ServerThread, scenario: str, calls: int = 1) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sipp", f"127.0.0.1:{srv.server.sip_port}", "-sf", str(SCENARIOS / scenario),
         "-m", str(calls), "-i", "127.0.0.1", "-p", str(free_udp_port()), "-nostdin",
         "-timeout", "15s", "-timeout_error", "-max_recv_loops", "1000", "-r", "50"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_options_is_answered_200_with_allow(start_server: Callable[..., ServerThread]) -> None:
    srv = start_server(sip={"enabled": True, "port": 0})
    done = sipp(srv, "options.xml", calls=5)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]


def test_a_call_no_trunk_takes_is_refused_404_and_acked(
    start_server: Callable[..., ServerThread],
) -> None:
    srv = start_server(sip={"enabled": True, "port": 0})
    done = sipp(srv, "invite_refused.xml", calls=10)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    # A refused call keeps no record (its transaction absorbs late copies).
    endpoint = srv.server.sip_endpoint
    assert endpoint is not None and endpoint.uas is not None
    assert srv.call(lambda: len(endpoint.uas.calls)) == 0  # type: ignore[union-attr]
