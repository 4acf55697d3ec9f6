"""LiveKit's webhooks, checked with livekit-api's own WebhookReceiver: room,
participant and track events, per tenant, signed with the tenant's key,
and retried when the receiver fails."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from livekit import api
from livekit.protocol import models

from .conftest import ServerThread
from .test_rooms import joined, publish_tone, run, token, until

pytestmark = [pytest.mark.slow, pytest.mark.media]


class Receiver:
    """An HTTP endpoint that keeps what it is sent; its first ``fail``
    requests get a 500."""

    def __init__(self, fail: int = 0) -> None:
        self.got: list[tuple[str, str]] = []  # (body, Authorization)
        self.fail = fail
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (the stdlib's name)
                body = self.rfile.read(int(self.headers["Content-Length"])).decode()
                if receiver.fail > 0:
                    receiver.fail -= 1
                    self.send_response(500)
                else:
                    receiver.got.append((body, self.headers.get("Authorization", "")))
                    self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.http.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}/hook"

    def events(self, key: str, secret: str) -> list[Any]:
        check = api.WebhookReceiver(api.TokenVerifier(key, secret))
        return [check.receive(body, auth) for body, auth in list(self.got)]


@pytest.fixture
def receivers() -> Iterator[Callable[..., Receiver]]:
    made: list[Receiver] = []

    def make(**kw: Any) -> Receiver:
        made.append(Receiver(**kw))
        return made[-1]

    yield make
    for r in made:
        r.http.shutdown()
        r.http.server_close()


def test_room_participant_and_track_events_reach_the_tenant_signed_with_its_key(
    start_server: Callable[..., ServerThread], receivers: Callable[..., Receiver]
) -> None:
    acme_hook, default_hook = receivers(), receivers(fail=1)  # the default's first POST fails
    srv = start_server(
        tenants={
            "acme": {"keys": {"acme-key": "acme-secret-0123"}, "webhook_urls": [acme_hook.url]}
        },
        webhook={"urls": [default_hook.url]},
        room={"departure_timeout": 1},
    )

    async def main() -> None:
        user, _ = await joined(
            srv, token("u1", room="sales", key="acme-key", secret="acme-secret-0123"), True
        )
        player = await publish_tone(user, 440.0)
        await until(lambda: len(acme_hook.got) >= 3, "the first acme events")
        player.cancel()
        await user.disconnect()

    run(main)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        names = [e.event for e in acme_hook.events("acme-key", "acme-secret-0123")]
        if "room_finished" in names:
            break
        time.sleep(0.1)
    events = acme_hook.events("acme-key", "acme-secret-0123")  # each one verified
    names = [e.event for e in events]
    assert names[:3] == ["room_started", "participant_joined", "track_published"], names
    assert {"participant_left", "track_unpublished", "room_finished"} <= set(names[3:]), names
    by_name = {e.event: e for e in events}
    assert by_name["room_started"].room.name == "sales"
    assert by_name["room_started"].room.sid.startswith("RM_")
    assert by_name["participant_joined"].participant.identity == "u1"
    assert by_name["track_published"].track.sid.startswith("TR_")
    assert by_name["track_published"].track.type == models.AUDIO
    assert all(e.id.startswith("EV_") and e.created_at > 0 for e in events)
    # The other tenant's endpoint heard nothing of it; its own events come
    # through a failed first try (retried after a second).
    assert default_hook.got == []
    asyncio.run(_create_room(srv))
    deadline = time.monotonic() + 10
    while not default_hook.got and time.monotonic() < deadline:
        time.sleep(0.1)
    (started,) = default_hook.events("devkey", "secret")
    assert started.event == "room_started" and started.room.name == "ops"


async def _create_room(srv: ServerThread) -> None:
    async with api.LiveKitAPI(srv.url, "devkey", "secret") as lk:
        await lk.room.create_room(api.CreateRoomRequest(name="ops"))
