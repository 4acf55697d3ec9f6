"""The status page in Debian's headless Chromium: it renders the state of a
running server, with a worker and a waiting job, checked in the DOM; a
screenshot is kept as a test artifact (``test-artifacts/status.png``)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from livekit import api

from edgedispatch._testbase.fake_worker import FakeWorker

from .conftest import ServerThread
from .test_worker_protocol import run

CHROMIUM = shutil.which("chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium")


def operator_token() -> str:
    return (
        api.AccessToken("devkey", "secret")
        .with_identity("operator")
        .with_grants(api.VideoGrants(room_list=True))
        .to_jwt()
    )


def chromium(url: str, *args: str) -> str:
    assert CHROMIUM is not None
    done = subprocess.run(
        [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         "--virtual-time-budget=4000", "--window-size=1280,900", *args, url],
        capture_output=True, text=True, timeout=90,
    )  # fmt: skip
    return done.stdout


def test_the_page_shows_a_worker_and_why_a_job_waits(
    start_server: Callable[..., ServerThread],
) -> None:
    srv = start_server()

    async def scene() -> tuple[str, str]:
        worker = FakeWorker(srv.url, agent_name="support")
        worker_id = await worker.connect()
        async with api.LiveKitAPI(srv.url, "devkey", "secret") as lk:
            await lk.agent_dispatch.create_dispatch(
                api.CreateAgentDispatchRequest(agent_name="billing", room="call-42")
            )
        url = f"{srv.url}/status#token={operator_token()}"
        dom = await asyncio.to_thread(chromium, url, "--dump-dom")
        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / "status.png"
        await asyncio.to_thread(chromium, url, f"--screenshot={shot}")
        return worker_id, dom

    worker_id, dom = run(scene())
    assert "all tenants" in dom  # the operator's view
    assert f'data-id="{worker_id}"' in dom and "support" in dom and "fake-1.0" in dom
    # The job for "billing", which has no worker, waits, and says why.
    assert "call-42" in dom
    assert "waiting: NO_WORKERS" in dom
    assert (ARTIFACTS / "status.png").stat().st_size > 10_000
