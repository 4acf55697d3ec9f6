"""Fuzzed joins at /rtc and /rtc/v1, in-process: tokens signed with the
right key whose claims have odd types, and odd query parameters.  A join
is refused with 400, 401 or 403 and a reason, or admitted; never a 5xx,
and tenant acme's people are untouched."""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import urlencode

import jwt
from hypothesis import example, given
from hypothesis import strategies as st
from livekit.protocol import rtc

from edgedispatch._testbase.links import RecordingSink
from edgedispatch.wire.http import Request, Response
from tests.fuzzing import fuzz_settings, json_values, mutated, text
from tests.unit.test_fuzz_twirp import WALL, World, check_world

CLAIMS = ["sub", "name", "kind", "metadata", "attributes", "roomConfig"]
VIDEO = ["roomJoin", "room", "canPublish", "canPublishSources", "hidden", "canSubscribe"]


@st.composite
def join_tokens(draw: st.DrawFn) -> str:
    claims: dict[str, Any] = {"iss": "devkey", "sub": "zed", "nbf": int(WALL) - 10}
    video: dict[str, Any] = {"roomJoin": True, "room": "r1"}
    claims.update(draw(st.dictionaries(st.sampled_from(CLAIMS), json_values, max_size=3)))
    video.update(draw(st.dictionaries(st.sampled_from(VIDEO), json_values, max_size=3)))
    claims["video"] = video
    return jwt.encode(claims, "secret", algorithm="HS256")


@st.composite
def queries(draw: st.DrawFn) -> dict[str, str]:
    join = rtc.JoinRequest(
        client_info={"sdk": draw(st.integers(0, 20)), "protocol": draw(st.integers(0, 20))}
    )
    wrapped = base64.b64encode(draw(mutated(join.SerializeToString()))).decode()
    values = st.one_of(text(), st.just(wrapped), st.sampled_from(["1", "true", "-1", "999999"]))
    names = st.sampled_from(["join_request", "protocol", "auto_subscribe", "reconnect", "room"])
    return draw(st.dictionaries(names, values, max_size=3))


class Conn(RecordingSink):
    """The accepted WebSocket, as the app sees it."""

    def keepalive(self, interval: float, timeout: float) -> None:
        pass


def join(world: World, path: str, token: str, query: dict[str, str]) -> Response | None:
    """The upgrade's answer, or None once the join was taken."""
    raw = urlencode({**query, "access_token": token})
    req = Request("GET", f"{path}?{raw}", path, raw, {}, b"", "10.0.0.7", world.now)
    answer = world.app.handle_upgrade(req)
    if isinstance(answer, Response):
        return answer
    answer(Conn())
    return None


@given(join_tokens(), queries(), st.sampled_from(["/rtc", "/rtc/v1", "/rtc/validate"]))
@example(  # canPublishSources a number: a TypeError made the answer a 500
    jwt.encode(
        {
            "iss": "devkey",
            "sub": "zed",
            "video": {"roomJoin": True, "room": "r1", "canPublishSources": 5},
        },
        "secret",
    ),
    {},
    "/rtc/validate",
)
@example(  # the list became the participant's identity: a TypeError in the join
    jwt.encode(
        {"iss": "devkey", "sub": [None], "video": {"roomJoin": True, "room": "r1"}}, "secret"
    ),
    {},
    "/rtc",
)
@fuzz_settings(100)
def test_fuzzed_joins_are_refused_with_a_reason(
    token: str, query: dict[str, str], path: str
) -> None:
    world = World()
    if path.endswith("/validate"):
        raw = urlencode({**query, "access_token": token})
        validated = world.app.handle_http(
            Request("GET", f"{path}?{raw}", path, raw, {}, b"", "10.0.0.7", world.now)
        )
        assert isinstance(validated, Response)
        answer: Response | None = validated
    else:
        answer = join(world, path, token, query)
    if answer is not None:
        assert answer.status in (200, 400, 401, 403), (answer.status, answer.body)
        assert answer.body
    check_world(world)
