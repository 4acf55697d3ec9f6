"""``/metrics``: what the page says after real domain traffic, parsed as
Prometheus parses it, and who may read it."""

from __future__ import annotations

from collections import Counter

from prometheus_client.parser import text_string_to_metric_families

from edgedispatch._core.codes import JobStatus
from edgedispatch._testbase.links import RecordingLink
from edgedispatch.api.app import App, _loopback
from edgedispatch.config import DispatchConfig, RoomConfig, ServerConfig
from edgedispatch.dispatch.domain import Domain
from edgedispatch.dispatch.records import Acceptance
from edgedispatch.dispatch.specs import AgentSpec, DispatchSpec, WorkerSpec
from edgedispatch.obs import metrics
from edgedispatch.wire.http import Request
from edgedispatch.wire.tokens import Verifier


def samples(domain: Domain) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = metrics.render(metrics.Sources(domain)).decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[s.name, tuple(sorted(s.labels.items()))] = s.value
    return out


def dispatch(domain: Domain, room: str, agent: str, now: float) -> str:
    rec = domain.create_dispatch("t1", DispatchSpec(room, AgentSpec(agent)), now)
    domain.step(now)
    return rec.job_ids[0]


def test_the_page_counts_offers_assignments_declines_and_ended_jobs() -> None:
    domain = Domain(DispatchConfig(), RoomConfig())
    domain.wall.offset = 1_700_000_000.0
    link = RecordingLink(tenant="t1")
    domain.register_worker(link, WorkerSpec(agent_name="support", slots=4), 0.0)
    first = dispatch(domain, "r1", "support", 0.0)
    domain.accept(link, first, Acceptance("agent-1"), now=0.002)  # 2 ms after creation
    domain.step(0.002)
    domain.job_status(link, first, JobStatus.SUCCESS, now=1.0)
    domain.step(1.0)
    second = dispatch(domain, "r2", "support", 2.0)
    domain.decline(link, second, now=2.1)
    domain.step(2.1)
    dispatch(domain, "r3", "nobody", 3.0)  # no worker for it: it waits

    got = samples(domain)
    # The counts kept as jobs change agree with the records themselves.
    tally = domain.jobs.tally
    held = Counter((rec.key.tenant, rec.state) for rec in domain.jobs.jobs.values())
    assert +tally.states == held
    assert set(tally.queued) == {
        j for j, rec in domain.jobs.jobs.items() if rec.state.name == "QUEUED"
    }
    assert got["edgedispatch_offers_total", ()] >= 2
    assert got["edgedispatch_assignments_total", ()] == 1
    assert got["edgedispatch_declines_total", ()] == 1
    ended = (
        "edgedispatch_jobs_ended_total",
        (("reason", "NONE"), ("state", "SUCCESS"), ("tenant", "t1")),
    )
    assert got[ended] == 1
    # The one assignment waited 2 ms: in the 2.5 ms bucket, not the 1 ms one.
    assert got["edgedispatch_dispatch_latency_seconds_count", ()] == 1
    assert got["edgedispatch_dispatch_latency_seconds_bucket", (("le", "0.001"),)] == 0
    assert got["edgedispatch_dispatch_latency_seconds_bucket", (("le", "0.0025"),)] == 1
    assert abs(got["edgedispatch_dispatch_latency_seconds_sum", ()] - 0.002) < 1e-6
    waiting = (
        "edgedispatch_queue_depth",
        (("agent", "nobody"), ("reason", "NO_WORKERS"), ("tenant", "t1")),
    )
    assert got[waiting] == 1
    assert (
        got[
            "edgedispatch_workers",
            (("agent", "support"), ("status", "AVAILABLE"), ("tenant", "t1")),
        ]
        == 1
    )
    assert got["edgedispatch_rooms", (("tenant", "t1"),)] == 3


def app_with_metrics(token: str = "") -> App:
    app = App(Domain(DispatchConfig(), RoomConfig()), Verifier({}, {}), ServerConfig())
    app.metrics = lambda: b"edgedispatch_offers_total 0.0\n"
    app.metrics_token = token
    return app


def get(app: App, peer: str, auth: str = "") -> int:
    headers = {"authorization": auth} if auth else {}
    resp = app.handle_http(Request("GET", "/metrics", "/metrics", "", headers, b"", peer, 0.0))
    return resp.status  # type: ignore[union-attr]


def test_without_a_token_only_loopback_clients_read_the_page() -> None:
    app = app_with_metrics()
    assert get(app, "127.0.0.1") == 200
    assert get(app, "::1") == 200
    assert get(app, "::ffff:127.0.0.1") == 200
    assert get(app, "10.0.0.5") == 403
    assert get(app, "2001:db8::1") == 403
    assert not _loopback("192.168.1.2")


def test_with_a_token_anyone_who_sends_it_reads_the_page() -> None:
    app = app_with_metrics("s3cret")
    assert get(app, "10.0.0.5", "Bearer s3cret") == 200
    assert get(app, "10.0.0.5", "Bearer wrong") == 401
    assert get(app, "127.0.0.1") == 401  # the token is asked of everyone then
