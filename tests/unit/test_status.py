"""``/debug/state``: who sees what.  An operator's token (a key of the
default tenant) sees every tenant; a tenant's token only its own; a token
without roomList nothing."""

from __future__ import annotations

import json
import time

from livekit import api

from edgedispatch.api.app import App
from edgedispatch.config import DispatchConfig, RoomConfig, ServerConfig
from edgedispatch.dispatch.domain import Domain
from edgedispatch.dispatch.specs import AgentSpec, DispatchSpec
from edgedispatch.obs import metrics, status
from edgedispatch.wire.http import Request
from edgedispatch.wire.tokens import Verifier

KEYS = {"opkey": "op-secret", "akey": "a-secret", "bkey": "b-secret"}
TENANTS = {"opkey": "", "akey": "acme", "bkey": "globex"}


def make_app() -> App:
    domain = Domain(DispatchConfig(), RoomConfig())
    domain.wall.offset = time.time()  # the tokens are checked against the wall clock
    for tenant in ("acme", "globex"):
        domain.create_dispatch(tenant, DispatchSpec(f"{tenant}-room", AgentSpec("bot")), 0.0)
    domain.step(0.0)
    app = App(domain, Verifier(KEYS, TENANTS), ServerConfig())
    sources = metrics.Sources(domain)
    sources.store_info = lambda: {"path": "/var/lib/edgedispatch/edgedispatch.db"}
    app.state = lambda tenant, now_ns: status.snapshot(sources, tenant, now_ns)
    return app


def get(app: App, key: str, **grants: bool) -> tuple[int, dict[str, object]]:
    jwt = (
        api.AccessToken(key, KEYS[key])
        .with_identity("viewer")
        .with_grants(api.VideoGrants(**grants))
        .to_jwt()
    )
    req = Request(
        "GET", "/debug/state", "/debug/state", "", {"authorization": f"Bearer {jwt}"}, b"",
        "10.0.0.9", 1.0,
    )  # fmt: skip
    resp = app.handle_http(req)
    body = resp.body  # type: ignore[union-attr]
    return resp.status, json.loads(body) if resp.status == 200 else {}  # type: ignore[union-attr]


def test_an_operator_sees_every_tenant_and_the_store() -> None:
    code, state = get(make_app(), "opkey", room_list=True)
    assert code == 200
    assert {j["tenant"] for j in state["jobs"]} == {"acme", "globex"}  # type: ignore[union-attr]
    assert {r["name"] for r in state["rooms"]} == {"acme-room", "globex-room"}  # type: ignore[union-attr]
    assert state["store"] == {"path": "/var/lib/edgedispatch/edgedispatch.db"}
    (job, _) = state["jobs"]  # type: ignore[misc]
    assert job["waiting_for"] == "NO_WORKERS" and job["age_s"] == 1.0


def test_a_tenant_sees_its_own_and_nothing_of_the_others_or_the_store() -> None:
    code, state = get(make_app(), "akey", room_list=True)
    assert code == 200
    assert [j["tenant"] for j in state["jobs"]] == ["acme"]  # type: ignore[union-attr]
    assert [r["name"] for r in state["rooms"]] == ["acme-room"]  # type: ignore[union-attr]
    assert "store" not in state
    assert "globex" not in json.dumps(state)


def test_a_token_without_room_list_sees_nothing() -> None:
    code, _ = get(make_app(), "opkey", room_join=True, room="x")
    assert code == 403
