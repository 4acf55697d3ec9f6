"""livekit-client 2.23 in Debian's headless Chromium, with a fake microphone
and camera: it joins, publishes, and exchanges data with a Python (rtc SDK)
participant, who hears and sees it, in both signalling modes."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from livekit import rtc

from .clients import NODE_DIR
from .conftest import ServerThread
from .test_rooms import MODES, joined, run, token, until
from .test_video import watch
from .tones import measure

pytestmark = [pytest.mark.slow, pytest.mark.media]
CHROMIUM = shutil.which("chromium")
UMD = NODE_DIR / "node_modules" / "livekit-client" / "dist" / "livekit-client.umd.js"
PAGE = Path(__file__).resolve().parents[1] / "browser" / "room.html"
needs_browser = pytest.mark.skipif(
    CHROMIUM is None or not UMD.is_file(),
    reason="needs Debian's chromium and tests/node's livekit-client (./dev test installs both)",
)


class PageServer:
    """Serves the page and livekit-client, and takes the page's report."""

    def __init__(self) -> None:
        self.results: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                path = self.path.split("?")[0]
                body = (PAGE if path == "/room.html" else UMD).read_bytes()
                kind = "text/html" if path == "/room.html" else "text/javascript"
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:  # noqa: N802
                data = self.rfile.read(int(self.headers["Content-Length"]))
                outer.results.append(json.loads(data))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.http.serve_forever, daemon=True).start()
        self.base = f"http://127.0.0.1:{self.http.server_address[1]}"


@needs_browser
@pytest.mark.parametrize("loop_kind", ["uvloop"], indirect=True)
@pytest.mark.parametrize("mode", MODES)
def test_livekit_client_in_chromium_talks_with_a_python_participant(
    start_server: Callable[..., ServerThread], tmp_path: Path, mode: str, loop_kind: str
) -> None:
    srv = start_server()
    page = PageServer()
    url = f"{page.base}/room.html?mode={mode}&url={srv.ws_url}&token={token('browser')}"
    assert CHROMIUM is not None
    browser = subprocess.Popen(
        [
            CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu",
            "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            "--autoplay-policy=no-user-gesture-required",
            f"--user-data-dir={tmp_path / 'profile'}", url,
        ],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip

    async def main() -> tuple[list[tuple[str | None, bytes, str]], float, int, int]:
        python, _ = await joined(srv, token("python"), True)
        got: list[tuple[str | None, bytes, str]] = []
        tracks: asyncio.Queue[rtc.Track] = asyncio.Queue()
        python.on("track_subscribed", lambda t, pub, who: tracks.put_nowait(t))

        def on_data(p: rtc.DataPacket) -> None:
            got.append((p.participant.identity if p.participant else None, p.data, p.topic))
            asyncio.ensure_future(
                python.local_participant.publish_data(b"hello browser", topic="reply")
            )

        python.on("data_received", on_data)
        await until(lambda: bool(got), "the browser's data", 60)
        by_kind = {}
        for _ in range(2):
            track = await asyncio.wait_for(tracks.get(), 20)
            by_kind[track.kind] = track
        stream = rtc.AudioStream(
            by_kind[rtc.TrackKind.KIND_AUDIO], sample_rate=48000, num_channels=1
        )
        samples: list[bytes] = []
        async for event in stream:
            samples.append(bytes(event.frame.data))
            if len(samples) >= 150:  # 1.5 s
                break
        await stream.aclose()
        import numpy as np

        rms, _ = measure(np.frombuffer(b"".join(samples[50:]), dtype=np.int16).astype(float))
        frames, _, width = await watch(by_kind[rtc.TrackKind.KIND_VIDEO], 2.0)
        await python.disconnect()
        return got, rms, frames, width

    try:
        got, rms, frames, width = run(main)
        deadline_ok = asyncio.run(_wait(lambda: bool(page.results), 30))
        assert deadline_ok, "the page never reported"
    finally:
        browser.kill()
        browser.wait()
        page.http.shutdown()
        page.http.server_close()
    (result,) = page.results
    assert result["ok"], result.get("error")
    assert result["sid"].startswith("RM_") and "python" in result["others"]
    assert ("browser", b"hello from the browser", "chat") in got
    assert {"from": "python", "topic": "reply", "text": "hello browser"} in result["replies"]
    assert rms > 100  # Chrome's fake microphone beeps: audio arrived
    assert frames >= 10 and width > 0, (frames, width)  # and its fake camera is seen


async def _wait(predicate: Callable[[], bool], timeout: float) -> bool:
    for _ in range(int(timeout / 0.05)):
        if predicate():
            return True
        await asyncio.sleep(0.05)
    return predicate()
