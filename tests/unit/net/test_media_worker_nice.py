"""``rtc.media_nice``: a media worker lowers its own priority before it
says it is ready (its threads, started later, inherit it)."""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys

import msgspec
import pytest

from edgedispatch.config import RtcConfig
from edgedispatch.net.media_link import CONFIG_ENV, FD_ENV, aiortc_problem

pytestmark = pytest.mark.skipif(bool(aiortc_problem()), reason="needs aiortc")


def nice_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[16])


@pytest.mark.parametrize("wanted", [0, 3])
def test_a_media_worker_runs_at_the_configured_nice(wanted: int) -> None:
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    env = {
        **os.environ,
        FD_ENV: str(child.fileno()),
        CONFIG_ENV: msgspec.json.encode(RtcConfig(media_nice=wanted)).decode(),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgedispatch.net.media_worker"],
        pass_fds=(child.fileno(),),
        env=env,
        stdin=subprocess.DEVNULL,
    )
    child.close()
    try:
        ready, _, _ = select.select([parent], [], [], 60)
        assert ready, "the worker never said it was ready"
        assert nice_of(proc.pid) == os.nice(0) + wanted
    finally:
        parent.close()  # the link ends: the worker exits
        proc.wait(timeout=30)
