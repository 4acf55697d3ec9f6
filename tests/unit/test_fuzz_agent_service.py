"""Fuzzed bodies for ``edgedispatch.AgentService`` (JSON only), through the
app and the real agent manager, in-process: every method answers success
or a client's Twirp error, never a 5xx.  The caller is a tenant that may
run no code of its own, so no definition it sends can start a process."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import jwt
import msgspec
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from edgedispatch import config
from edgedispatch.api import agents as agents_api
from edgedispatch.api.app import App
from edgedispatch.dispatch.domain import Domain
from edgedispatch.runtime.contain import Containment
from edgedispatch.runtime.manager import AgentManager
from edgedispatch.store import MemoryStore
from edgedispatch.wire.http import Request, Response
from edgedispatch.wire.tokens import Verifier
from tests.fuzzing import deep_json, fuzz_settings, json_values, mutated, text
from tests.unit.test_fuzz_twirp import check_answer

METHODS = ["ListAgents", "AddAgent", "RemoveAgent", "StartAgent", "StopAgent", "Nope"]
FIELDS = [f.name for f in msgspec.structs.fields(config.AgentDefinition)]


@pytest.fixture(scope="module")
def cfg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[config.Config]:
    base = config.load(dev=True, env={})
    acme = config.TenantConfig("acme", {"acmekey": "acmesecret"})
    sandbox = config.SandboxConfig(mode="off", tenant_dirs=str(tmp_path_factory.mktemp("t")))
    yield config.validate(msgspec.structs.replace(base, tenants=[acme], sandbox=sandbox))


def token() -> str:
    now = int(time.time())
    claims = {"iss": "acmekey", "sub": "admin", "nbf": now - 10, "exp": now + 600}
    return jwt.encode({**claims, "agent": {"admin": True}}, "acmesecret", algorithm="HS256")


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    """A request of the right shape with odd values, or any JSON, or none."""
    kind = draw(st.sampled_from(["shaped", "any", "deep", "bytes"]))
    if kind == "deep":
        return deep_json(draw(st.sampled_from([50, 5000, 100_000])), draw(st.sampled_from("[{")))
    if kind == "bytes":
        return draw(st.binary(max_size=100))
    if kind == "any":
        return json.dumps(draw(json_values)).encode()
    definition = draw(
        st.dictionaries(st.sampled_from(FIELDS), st.one_of(json_values, text()), max_size=6)
    )
    body: dict[str, Any] = {
        "agent": definition,
        "name": draw(st.one_of(text(["a"]), json_values)),
        "timeout": draw(st.one_of(st.floats(), json_values)),
    }
    data = json.dumps(body).encode()
    return draw(mutated(data)) if draw(st.booleans()) else data


async def call_all(cfg: config.Config, calls: list[tuple[str, bytes]]) -> list[Response]:
    domain = Domain(cfg.dispatch, cfg.room)
    domain.wall.offset = time.time() - 1.0  # the tokens' clock
    verifier = Verifier(cfg.secrets(), cfg.key_tenants())
    app = App(domain, verifier, cfg.server)
    manager = AgentManager(domain, cfg, "ws://x", MemoryStore(), verifier, Containment(cfg))
    app.agents = manager
    answers = []
    try:
        for method, body in calls:
            path = f"/twirp/{agents_api.SERVICE}/{method}"
            headers = {"content-type": "application/json", "authorization": f"Bearer {token()}"}
            answer = app.handle_http(Request("POST", path, path, "", headers, body, "x", 1.0))
            answers.append(answer if isinstance(answer, Response) else await answer)
        # Nothing of the tenant's may run: it has no allow_code.
        assert manager.list("acme") == []
    finally:
        await manager.close()
    return answers


@given(st.lists(st.tuples(st.sampled_from(METHODS), bodies()), min_size=1, max_size=3))
@example([("AddAgent", deep_json(100_000, "["))])  # msgspec's RecursionError was a 500
@example([("AddAgent", deep_json(100_000, "{"))])
@fuzz_settings(80)
def test_fuzzed_agent_service_bodies_get_a_client_error(
    cfg: config.Config, calls: list[tuple[str, bytes]]
) -> None:
    for answer in asyncio.run(call_all(cfg, calls)):
        check_answer(answer, "application/json")
        from hypothesis import event

        event(answer.body[:60].decode(errors="replace"))


def test_a_deeply_nested_body_is_malformed(cfg: config.Config) -> None:
    (answer,) = asyncio.run(call_all(cfg, [("ListAgents", deep_json(100_000))]))
    assert answer.status == 400 and json.loads(answer.body)["code"] == "malformed"
