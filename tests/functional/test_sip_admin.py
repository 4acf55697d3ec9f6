"""``livekit.SIP``'s trunks and dispatch rules through the real clients:
``livekit-api``'s ``lkapi.sip`` in two tenants (each sees, changes and
routes only its own), Twirp JSON as the Node SDK sends it, LiveKit's
refusals, and the records kept across a restart on the same data
directory."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from livekit import api
from livekit.protocol import sip as pb

from edgedispatch.sip.routing import Call

from .clients import NODE_DIR
from .conftest import ServerThread, make_config

TENANTS = {"acme": {"acme-key": "acme-secret"}, "globex": {"globex-key": "globex-secret"}}
ACME_NUMBER, GLOBEX_NUMBER = "+15550100", "+15550200"


def _rule(prefix: str, trunk_id: str, agent: str, **more: Any) -> pb.CreateSIPDispatchRuleRequest:
    return pb.CreateSIPDispatchRuleRequest(
        dispatch_rule=pb.SIPDispatchRuleInfo(
            name=f"{prefix} line",
            rule=pb.SIPDispatchRule(
                dispatch_rule_individual=pb.SIPDispatchRuleIndividual(room_prefix=prefix)
            ),
            trunk_ids=[trunk_id],
            room_config=api.RoomConfiguration(agents=[api.RoomAgentDispatch(agent_name=agent)]),
            **more,
        )
    )


async def _code(call: Any) -> str:
    with pytest.raises(api.TwirpError) as info:
        await call
    return f"{info.value.code}: {info.value.message}"


def _twirp_json(url: str, method: str, body: dict[str, Any], token: str) -> tuple[int, Any]:
    req = urllib.request.Request(
        f"{url}/twirp/livekit.SIP/{method}",
        json.dumps(body).encode(),
        {"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _token(key: str, secret: str, **grants: Any) -> str:
    token = api.AccessToken(key, secret)
    if grants:
        token = token.with_sip_grants(api.SIPGrants(**grants))
    else:
        token = token.with_grants(api.VideoGrants(room_create=True))
    return token.to_jwt()


async def _lists(url: str) -> dict[str, bytes]:
    """What each tenant lists, as bytes (to compare across a restart)."""
    async with (
        api.LiveKitAPI(url, "acme-key", "acme-secret") as acme,
        api.LiveKitAPI(url, "globex-key", "globex-secret") as globex,
    ):
        trunks = await acme.sip.list_inbound_trunk(api.ListSIPInboundTrunkRequest())
        acme_rules = await acme.sip.list_dispatch_rule(api.ListSIPDispatchRuleRequest())
        globex_rules = await globex.sip.list_dispatch_rule(api.ListSIPDispatchRuleRequest())
        return {
            "acme trunks": trunks.SerializeToString(),
            "acme rules": acme_rules.SerializeToString(),
            "globex rules": globex_rules.SerializeToString(),
        }


def test_trunks_and_rules_per_tenant_through_livekit_api_and_after_a_restart(
    start_server: Callable[..., ServerThread], tmp_path: Path, loop_kind: str
) -> None:
    # Stopped by the test (the fixture stops the one started after it).
    srv = ServerThread(make_config(tenants=TENANTS, server={"data_dir": str(tmp_path)}), loop_kind)
    try:
        srv.start()
        rule_ids = asyncio.run(_manage(srv.url))
        _twirp_json_and_grants(srv.url)
        listed = asyncio.run(_lists(srv.url))
    finally:
        srv.stop()
    again = start_server(tenants=TENANTS, server={"data_dir": str(tmp_path)})
    assert asyncio.run(_lists(again.url)) == listed
    # A call to acme's number routes to acme's rules and agent, never
    # globex's: the PIN rule first (its PIN is then asked for), the open one
    # for a caller who cannot enter a PIN.
    directory = again.server.sip_directory
    assert directory is not None
    call = Call(calling="+15559999", called=ACME_NUMBER, source_ip="127.0.0.1")
    for no_pin, expected in ((False, rule_ids["vip"]), (True, rule_ids["acme"])):
        asked = call._replace(no_pin=no_pin)
        tenant, _, rule = again.call(lambda: directory.route(asked))  # noqa: B023
        assert (tenant, rule.sip_dispatch_rule_id) == ("acme", expected)
        assert [a.agent_name for a in rule.room_config.agents] == ["acme-agent"]


async def _manage(url: str) -> dict[str, str]:
    """Two tenants make, list, change and try each other's trunks and
    rules; returns acme's rule ids."""
    async with (
        api.LiveKitAPI(url, "acme-key", "acme-secret") as acme,
        api.LiveKitAPI(url, "globex-key", "globex-secret") as globex,
    ):
        a_in = await acme.sip.create_inbound_trunk(
            api.CreateSIPInboundTrunkRequest(
                trunk=pb.SIPInboundTrunkInfo(
                    name="acme in", numbers=[ACME_NUMBER], allowed_addresses=["127.0.0.0/8"]
                )
            )
        )
        a_out = await acme.sip.create_outbound_trunk(
            api.CreateSIPOutboundTrunkRequest(
                trunk=pb.SIPOutboundTrunkInfo(
                    name="acme out", numbers=[ACME_NUMBER], address="sip.carrier.example"
                )
            )
        )
        a_rule = await acme.sip.create_dispatch_rule(_rule("acme", a_in.sip_trunk_id, "acme-agent"))
        g_in = await globex.sip.create_inbound_trunk(
            api.CreateSIPInboundTrunkRequest(
                trunk=pb.SIPInboundTrunkInfo(name="globex in", numbers=[GLOBEX_NUMBER])
            )
        )
        g_rule = await globex.sip.create_dispatch_rule(
            _rule("globex", g_in.sip_trunk_id, "globex-agent")
        )
        assert a_in.sip_trunk_id.startswith("ST_")
        assert a_rule.sip_dispatch_rule_id.startswith("SDR_")
        assert a_in.created_at.seconds > 0

        # Each tenant lists only its own.
        listed = await acme.sip.list_inbound_trunk(api.ListSIPInboundTrunkRequest())
        assert [t.sip_trunk_id for t in listed.items] == [a_in.sip_trunk_id]
        rules = await globex.sip.list_dispatch_rule(api.ListSIPDispatchRuleRequest())
        assert [r.sip_dispatch_rule_id for r in rules.items] == [g_rule.sip_dispatch_rule_id]
        outs = await globex.sip.list_outbound_trunk(api.ListSIPOutboundTrunkRequest())
        assert list(outs.items) == []

        # Another tenant's ids are ids that do not exist.
        rename = globex.sip.update_inbound_trunk_fields(a_in.sip_trunk_id, name="x")
        assert (await _code(rename)).startswith("not_found")
        delete = api.DeleteSIPDispatchRuleRequest(sip_dispatch_rule_id=a_rule.sip_dispatch_rule_id)
        assert (await _code(globex.sip.delete_dispatch_rule(delete))).startswith("not_found")
        # A trunk id not there is deleted "again", as LiveKit answers it.
        not_there = api.DeleteSIPTrunkRequest(sip_trunk_id=a_out.sip_trunk_id)
        assert (await globex.sip.delete_trunk(not_there)).sip_trunk_id == a_out.sip_trunk_id
        outs = await acme.sip.list_outbound_trunk(api.ListSIPOutboundTrunkRequest())
        assert [t.sip_trunk_id for t in outs.items] == [a_out.sip_trunk_id]
        # A number routes to one tenant.
        same_number = pb.SIPInboundTrunkInfo(numbers=[ACME_NUMBER])
        taken = await _code(
            globex.sip.create_inbound_trunk(api.CreateSIPInboundTrunkRequest(trunk=same_number))
        )
        assert taken.startswith("invalid_argument") and a_in.sip_trunk_id not in taken

        # LiveKit's refusals, in its words.
        again = _rule("other", a_in.sip_trunk_id, "x")
        assert await _code(acme.sip.create_dispatch_rule(again)) == (
            "invalid_argument: Dispatch rule for the same trunk, inbound number, number, and "
            f'PIN combination already exists in dispatch rule "{a_rule.sip_dispatch_rule_id}" '
            '"acme line"'
        )
        open_to_all = api.CreateSIPInboundTrunkRequest(trunk=pb.SIPInboundTrunkInfo(name="open"))
        refused = await _code(acme.sip.create_inbound_trunk(open_to_all))
        assert refused.startswith("invalid_argument: for security, one of the fields")
        no_kind = pb.CreateSIPDispatchRuleRequest(dispatch_rule=pb.SIPDispatchRuleInfo(name="r"))
        assert await _code(acme.sip.create_dispatch_rule(no_kind)) == (
            "invalid_argument: missing rule"
        )

        # Field updates (a list update), and a PIN that makes a second rule distinct.
        changed = await acme.sip.update_inbound_trunk_fields(
            a_in.sip_trunk_id, numbers=api.ListUpdate(add=["+15550101"]), name="acme main"
        )
        assert (list(changed.numbers), changed.name) == ([ACME_NUMBER, "+15550101"], "acme main")
        pin_rule = _rule("vip", a_in.sip_trunk_id, "acme-agent")
        pin_rule.dispatch_rule.rule.dispatch_rule_individual.pin = "1234"
        second = await acme.sip.create_dispatch_rule(pin_rule)
        page = await acme.sip.list_dispatch_rule(
            api.ListSIPDispatchRuleRequest(page=api.Pagination(limit=1))
        )
        first_id = min(a_rule.sip_dispatch_rule_id, second.sip_dispatch_rule_id)
        assert [r.sip_dispatch_rule_id for r in page.items] == [first_id]
        return {"acme": a_rule.sip_dispatch_rule_id, "vip": second.sip_dispatch_rule_id}


def _twirp_json_and_grants(url: str) -> None:
    """Twirp JSON, as the Node SDK sends it; the grant LiveKit asks for."""
    admin = _token("acme-key", "acme-secret", admin=True)
    status, body = _twirp_json(url, "ListSIPInboundTrunk", {}, admin)
    assert status == 200 and [t["name"] for t in body["items"]] == ["acme main"]
    for token in (_token("acme-key", "acme-secret"), _token("acme-key", "acme-secret", call=True)):
        status, body = _twirp_json(url, "ListSIPInboundTrunk", {}, token)
        assert (status, body["code"]) == (403, "permission_denied"), body
    bad = {"trunk": {"numbers": "not a list"}}
    status, body = _twirp_json(url, "CreateSIPInboundTrunk", bad, admin)
    assert (status, body["code"]) == (400, "malformed")


@pytest.mark.once
@pytest.mark.skipif(
    not (NODE_DIR / "node_modules" / "livekit-server-sdk").exists(),
    reason="the Node SDK is not installed (cd tests/node && npm ci)",
)
def test_the_node_sip_client(start_server: Callable[..., ServerThread]) -> None:
    srv = start_server()
    env = {"LIVEKIT_URL": srv.url, "LIVEKIT_API_KEY": "devkey", "LIVEKIT_API_SECRET": "secret"}
    result = subprocess.run(
        ["node", "sip_client.mjs"],
        cwd=NODE_DIR,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["inbound"]["numbers"] == ["+15550300"]
    assert out["listed"] == [out["inbound"]["sipTrunkId"]]
    assert out["rule"]["roomPrefix"] == "node" and out["rule"]["agents"] == ["node-agent"]
    assert out["rules"] == [out["rule"]["id"]]
    # A trunk of both directions (the deprecated createSipTrunk) is listed
    # by the legacy call and, as an inbound trunk, by the new one.
    assert len(out["legacy"]) == 2 and out["inbound"]["sipTrunkId"] in out["legacy"]
    assert sorted(out["legacyInbound"]) == sorted(out["legacy"])
    assert out["deleted"] == {"inbound": 0, "rules": 0}
    assert out["conflict"]["code"] == "invalid_argument"
