"""The one-binary build (``./dev dist``), unpacked into a clean folder and
run with a PATH that has no Python venv: it serves with the compiled core,
answers CreateDispatch through its own CLI, has a room joined by a
``livekit`` rtc client (so its media workers start from the binary), and
answers a sipp OPTIONS.

``./dev test`` builds the tarball while the other tests run and names it in
``EDGEDISPATCH_TEST_TARBALL``: then it must be there.  Otherwise (pytest run
by hand, or ``EDGEDISPATCH_SKIP_DIST=1 ./dev test``) this tests the tarball
``./dev dist`` left in ``dist/``, and is skipped without one.

Once, on the binary's default loop: what it checks is what the build put in
the binary; the server's loops are the rest of the suite's subject."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import sqlite3
import subprocess
import tarfile
import urllib.request
from pathlib import Path

import pytest
from livekit import rtc

from .test_rooms import token

ROOT = Path(__file__).resolve().parents[2]
BUILT = os.environ.get("EDGEDISPATCH_TEST_TARBALL", "")
TARBALLS = [Path(BUILT)] if BUILT else sorted((ROOT / "dist").glob("edgedispatch-*-linux-*.tar.gz"))
pytestmark = [
    pytest.mark.once,
    pytest.mark.skipif(not TARBALLS, reason="no dist/edgedispatch-*.tar.gz: ./dev dist"),
]
OPTIONS = Path(__file__).resolve().parents[1] / "sip" / "options.xml"


def test_the_unpacked_binary_serves_dispatch_rooms_and_sip(tmp_path: Path) -> None:
    with tarfile.open(TARBALLS[-1]) as tar:
        tar.extractall(tmp_path, filter="tar")
    binary = tmp_path / "edgedispatch" / "edgedispatch"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8"}
    (tmp_path / "sip.toml").write_text("[sip]\nenabled = true\nport = 0\n")
    server = subprocess.Popen(
        [str(binary), "serve", "--dev", "--port", "0",
         "--config", str(tmp_path / "sip.toml"), "--data-dir", str(tmp_path / "data")],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert server.stdout is not None and server.stderr is not None
        match = re.search(r"listening on (http://\S+)", server.stdout.readline())
        assert match, server.stderr.read()
        url = match.group(1)
        log = ""
        while "serving (compiled core:" not in log:
            log += server.stderr.readline()
        assert "serving (compiled core: True)" in log  # the binary loaded the compiled core
        sip_port = int(re.search(r"SIP on udp and tcp \S+:(\d+)", log).group(1))  # type: ignore[union-attr]

        made = subprocess.run(
            [str(binary), "dispatch", "create", "--room", "r1", "--agent-name", "bot",
             "--dev", "--url", url, "--json"],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert made.returncode == 0 and '"AD_' in made.stdout, made.stderr
        # Answered once committed, by the store's writer process (which the
        # binary starts as ``-m edgedispatch.store.writer``).
        db = sqlite3.connect(tmp_path / "data" / "edgedispatch.db")
        assert db.execute("SELECT COUNT(*) FROM dispatches").fetchone() == (1,)
        db.close()

        async def join() -> list[str]:
            room = rtc.Room()
            await room.connect(url.replace("http", "ws"), token("caller", "r1"))
            try:
                source = rtc.AudioSource(48000, 1)
                track = rtc.LocalAudioTrack.create_audio_track("mic", source)
                await room.local_participant.publish_track(track)
                return [t.sid for t in room.local_participant.track_publications.values()]
            finally:
                await room.disconnect()

        published = asyncio.run(asyncio.wait_for(join(), 60))
        assert len(published) == 1 and published[0].startswith("TR_")

        sipp = shutil.which("sipp")
        if sipp is not None:
            done = subprocess.run(
                [sipp, f"127.0.0.1:{sip_port}", "-sf", str(OPTIONS), "-m", "1", "-i", "127.0.0.1",
                 "-p", "0", "-nostdin", "-timeout", "15s", "-timeout_error"],
                capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert done.returncode == 0, done.stdout[-2000:]
        with urllib.request.urlopen(f"{url}/status", timeout=10) as resp:
            assert b"edgedispatch status" in resp.read()  # package data came along
    finally:
        server.terminate()
        server.communicate(timeout=30)
    assert server.returncode == 0
