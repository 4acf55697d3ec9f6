"""SIP over UDP and TCP, driven by sipp (Debian's sip-tester): what a trunk or a
prober sees from the server today."""

from __future__ import annotations

import asyncio
import logging
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from livekit import api
from livekit.protocol import sip as pb

from edgedispatch._testbase.fake_worker import FakeWorker
from edgedispatch.cli.bench.common import free_port

from .conftest import ServerThread
from .test_metrics_page import scrape
from .test_worker_protocol import run

SCENARIOS = Path(__file__).resolve().parents[1] / "sip"
pytestmark = pytest.mark.skipif(not shutil.which("sipp"), reason="sipp (sip-tester) missing")


def sipp(
    srv: ServerThread, scenario: Path, *args: str, calls: int = 1, transport: str = "u1"
) -> subprocess.CompletedProcess[str]:
    """sipp's run of ``scenario`` with ``args``; ``transport``: u1 (UDP)
    or t1 (TCP)."""
    return subprocess.run(
        ["sipp", f"127.0.0.1:{srv.server.sip_port}", "-sf", str(scenario), *args,
         "-m", str(calls), "-i", "127.0.0.1", "-p", str(free_port(udp_too=True)), "-nostdin",
         "-t", transport, "-timeout", "15s", "-timeout_error", "-max_recv_loops", "1000",
         "-r", "50"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


@pytest.mark.parametrize("transport", ["u1", "t1"], ids=["udp", "tcp"])
def test_options_is_answered_200_with_allow(
    start_server: Callable[..., ServerThread], transport: str
) -> None:
    srv = start_server(sip={"enabled": True, "port": 0})
    done = sipp(srv, SCENARIOS / "options.xml", calls=5, transport=transport)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]


@pytest.mark.parametrize("transport", ["u1", "t1"], ids=["udp", "tcp"])
def test_a_call_no_trunk_takes_is_refused_404_and_acked(
    start_server: Callable[..., ServerThread], transport: str
) -> None:
    srv = start_server(sip={"enabled": True, "port": 0})
    done = sipp(srv, SCENARIOS / "invite_refused.xml", calls=10, transport=transport)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    # A refused call keeps no record (its transaction absorbs late copies).
    endpoint = srv.server.sip_endpoint
    assert endpoint is not None and endpoint.uas is not None
    assert srv.call(lambda: len(endpoint.uas.calls)) == 0  # type: ignore[union-attr]
    # An operator sees them on /metrics, by the answer they got.
    got = scrape(srv.url)
    assert got["edgedispatch_sip_calls_total", (("code", "404"), ("direction", "inbound"))] == 10


TENANTS = {"acme": {"acme-key": "acme-secret"}, "globex": {"globex-key": "globex-secret"}}


def sipp_expecting(
    srv: ServerThread, tmp: Path, status: int, number: str, password: str
) -> subprocess.CompletedProcess[str]:
    """A call to ``number`` through acme's trunk with ``password``, which
    must end with ``status``."""
    scenario = tmp / f"auth_{status}.xml"
    scenario.write_text((SCENARIOS / "invite_auth.xml").read_text().replace("STATUS", str(status)))
    return sipp(srv, scenario, "-s", number, "-au", "acme", "-ap", password)


def sipp_plain(
    srv: ServerThread, tmp: Path, status: int, number: str
) -> subprocess.CompletedProcess[str]:
    """A call to ``number`` without credentials, which must end with ``status``."""
    scenario = tmp / f"plain_{status}.xml"
    text = (SCENARIOS / "invite_refused.xml").read_text()
    scenario.write_text(text.replace('response="404"', f'response="{status}"'))
    return sipp(srv, scenario, "-s", number)


def test_a_call_is_routed_by_its_tenants_trunk_and_rule(
    start_server: Callable[..., ServerThread], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """acme's number, with acme's trunk credentials, reaches acme's rule; its
    agent must be able to run (a worker connected) or the call gets 480."""
    srv = start_server(sip={"enabled": True, "port": 0}, tenants=TENANTS)

    async def setup() -> None:
        async with api.LiveKitAPI(srv.url, "acme-key", "acme-secret") as acme:
            trunk = await acme.sip.create_inbound_trunk(
                pb.CreateSIPInboundTrunkRequest(
                    trunk=pb.SIPInboundTrunkInfo(
                        name="acme line", numbers=["+15550100"], auth_username="acme",
                        auth_password="pw",
                    )
                )
            )  # fmt: skip
            await acme.sip.create_dispatch_rule(
                pb.CreateSIPDispatchRuleRequest(
                    dispatch_rule=pb.SIPDispatchRuleInfo(
                        rule=pb.SIPDispatchRule(
                            dispatch_rule_individual=pb.SIPDispatchRuleIndividual(room_prefix="c")
                        ),
                        trunk_ids=[trunk.sip_trunk_id],
                        room_config=api.RoomConfiguration(
                            agents=[api.RoomAgentDispatch(agent_name="acme-bot")]
                        ),
                    )
                )
            )

        async with api.LiveKitAPI(srv.url, "globex-key", "globex-secret") as globex:
            trunk = await globex.sip.create_inbound_trunk(
                pb.CreateSIPInboundTrunkRequest(
                    trunk=pb.SIPInboundTrunkInfo(name="globex line", numbers=["+15550200"])
                )
            )
            await globex.sip.create_dispatch_rule(
                pb.CreateSIPDispatchRuleRequest(
                    dispatch_rule=pb.SIPDispatchRuleInfo(
                        rule=pb.SIPDispatchRule(
                            dispatch_rule_individual=pb.SIPDispatchRuleIndividual(room_prefix="g")
                        ),
                        trunk_ids=[trunk.sip_trunk_id],
                    )
                )
            )

    asyncio.run(setup())
    with caplog.at_level(logging.INFO, logger="edgedispatch.sip"):
        done = sipp_expecting(srv, tmp_path, 480, "+15550100", "pw")
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
        assert "agent 'acme-bot' cannot run now" in caplog.text  # no worker: never a silent room
        done = sipp_expecting(srv, tmp_path, 401, "+15550100", "wrong")
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]

        async def with_worker() -> None:
            worker = FakeWorker(srv.url, "acme-key", "acme-secret", agent_name="acme-bot")
            await worker.connect()
            # Routed now; this scenario's INVITE has no SDP offer: 488.
            done = await asyncio.to_thread(sipp_expecting, srv, tmp_path, 488, "+15550100", "pw")
            assert done.returncode == 0, done.stdout[-3000:]
            await FakeWorker.close_all()

        run(with_worker())
        assert "call routed to room c_+15550199_" in caplog.text
        assert "(tenant acme," in caplog.text
        # Another tenant's number goes to that tenant's rule; no trunk's, 404.
        caplog.clear()
        answered = tmp_path / "answered.xml"
        text = (SCENARIOS / "call_caller_hangs_up.xml").read_text()
        answered.write_text(text.replace("MEDIA", "").replace("HOLD_MS", "200"))
        done = sipp(srv, answered, "-s", "+15550200")  # answered, then hung up
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
        assert (
            "call routed to room g_+15550199_" in caplog.text and "(tenant globex," in caplog.text
        )
        assert sipp_plain(srv, tmp_path, 404, "+15550999").returncode == 0
