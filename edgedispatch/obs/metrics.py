"""``/metrics``: the server's state and counts in Prometheus' text format.

Everything is read when Prometheus scrapes, from what the server keeps
anyway: the domain's records and its ``Tally``, the store's commit times,
the local agents.  So the dispatch path pays nothing for metrics but the
tally's additions.  prometheus_client renders the page (its custom
collector API); none of its metric objects, with their locks, sit on the
hot path.

Series (all prefixed ``edgedispatch_``):
- dispatch: ``dispatch_latency_seconds`` (creation to first assignment),
  ``offers_total``, ``assignments_total``, ``declines_total``,
  ``offer_timeouts_total``, ``jobs_ended_total{tenant,state,reason}``;
- now: ``jobs{tenant,state}``, ``queue_depth{tenant,agent,reason}``,
  ``workers{tenant,agent,status}``, ``worker_slots_used{tenant,agent}``;
- rooms: ``rooms{tenant}``, ``participants{tenant}``, ``tracks{tenant}``,
  ``media_packets_received_total`` and ``media_packets_forwarded_total``
  (all rooms: a media worker holds many tenants' rooms; as the workers
  last reported, each second);
- local agents: ``agent_processes{tenant,agent,kind}``,
  ``agent_memory_bytes{tenant,agent,kind}`` (unique set size),
  ``agent_running_jobs{tenant,agent,kind}``;
- the store: ``store_commit_seconds``, ``store_pending_writes``;
- SIP: ``sip_calls_total{direction,code}`` (each call's final answer: the
  one we sent to an incoming call, including refusals; the callee's to a
  call we placed, or 408/487 for none or our CANCEL), and
  ``sip_calls_active{tenant,state}`` (the bridged calls now).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from edgedispatch.dispatch.domain import Domain
from edgedispatch.dispatch.tally import LATENCY_BOUNDS


class AgentRow(NamedTuple):
    """One local agent, as ``runtime.manager`` reports it."""

    tenant: str
    agent: str
    kind: str
    processes: int
    memory_bytes: int
    running_jobs: int


class Histogram(NamedTuple):
    """Counts per bucket (the last is +Inf) of ``bounds``, and their sum."""

    bounds: Sequence[float]
    counts: Sequence[int]
    total: float


class Sources:
    """Where the page reads from; each part the server has is set."""

    def __init__(self, domain: Domain) -> None:
        self.domain = domain
        self.agents: Callable[[], list[AgentRow]] | None = None
        #: Tracks published in live rooms, per tenant.
        self.tracks: Callable[[], Counter[str]] | None = None
        self.store_commits: Callable[[], Histogram] | None = None
        self.store_pending: Callable[[], int] | None = None
        #: Packets the media workers received from publishers, and
        #: forwarded to subscribers (one per subscriber), so far.
        self.media_packets: Callable[[], tuple[int, int]] | None = None
        #: direction ("inbound", "outbound") -> final status -> calls
        self.sip_outcomes: Callable[[], dict[str, Counter[int]]] | None = None
        # For /debug/state (``obs.status``), scoped to a tenant (None: all):
        #: the local agents and their instances;
        self.agent_details: Callable[[str | None], list[dict[str, Any]]] | None = None
        #: the SIP calls in progress;
        self.sip_calls: Callable[[str | None], list[dict[str, Any]]] | None = None
        #: the store (operators only).
        self.store_info: Callable[[], dict[str, Any]] | None = None


def render(sources: Sources) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(sources))
    return generate_latest(registry)


def _histogram(name: str, doc: str, h: Histogram) -> HistogramMetricFamily:
    buckets: list[tuple[str, float]] = []
    running = 0
    for bound, count in zip([*h.bounds, float("inf")], h.counts, strict=True):
        running += count
        buckets.append(("+Inf" if bound == float("inf") else repr(bound), running))
    return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=h.total)


class _Collector(Collector):
    def __init__(self, sources: Sources) -> None:
        self._s = sources

    def collect(self) -> Iterator[Any]:
        yield from self._dispatch()
        yield from self._now()
        yield from self._rooms()
        yield from self._agents()
        yield from self._store()
        yield from self._sip()

    def _dispatch(self) -> Iterator[Any]:
        tally = self._s.domain.jobs.tally
        yield _histogram(
            "edgedispatch_dispatch_latency_seconds",
            "From a job's creation to its first assignment to a worker",
            Histogram(LATENCY_BOUNDS, tally.latency, tally.latency_sum),
        )
        for name, doc, value in (
            ("offers", "Jobs offered to workers", tally.offers),
            ("assignments", "Jobs assigned to workers", tally.assignments),
            ("declines", "Offers workers declined", tally.declines),
            ("offer_timeouts", "Offers no answer came to in offer_timeout", tally.offer_timeouts),
        ):
            yield CounterMetricFamily(f"edgedispatch_{name}", doc, value=value)
        ended = CounterMetricFamily(
            "edgedispatch_jobs_ended", "Jobs ended", labels=["tenant", "state", "reason"]
        )
        for (tenant, state, reason), n in sorted(tally.ended.items()):
            ended.add_metric([tenant, state.name, reason.name], n)
        yield ended

    def _now(self) -> Iterator[Any]:
        domain = self._s.domain
        tally = domain.jobs.tally
        queued: Counter[tuple[str, str, str]] = Counter()
        for rec in tally.queued.values():  # the queued ones only, not every record
            queued[rec.key.tenant, rec.key.agent_name, rec.wait.name] += 1
        jobs = GaugeMetricFamily("edgedispatch_jobs", "Jobs by state", labels=["tenant", "state"])
        for (tenant, state), n in sorted(tally.states.items()):
            jobs.add_metric([tenant, state.name], n)
        yield jobs
        depth = GaugeMetricFamily(
            "edgedispatch_queue_depth",
            "Queued jobs, by agent and why they wait",
            labels=["tenant", "agent", "reason"],
        )
        for labels, n in sorted(queued.items()):
            depth.add_metric(list(labels), n)
        yield depth
        workers: Counter[tuple[str, str, str]] = Counter()
        used: Counter[tuple[str, str]] = Counter()
        for view in domain.core.workers():
            workers[view.key.tenant, view.key.agent_name, view.status.name] += 1
            used[view.key.tenant, view.key.agent_name] += view.used
        by_status = GaugeMetricFamily(
            "edgedispatch_workers", "Connected workers", labels=["tenant", "agent", "status"]
        )
        for labels, n in sorted(workers.items()):
            by_status.add_metric(list(labels), n)
        yield by_status
        slots = GaugeMetricFamily(
            "edgedispatch_worker_slots_used", "Jobs workers hold", labels=["tenant", "agent"]
        )
        for pair, n in sorted(used.items()):
            slots.add_metric(list(pair), n)
        yield slots

    def _rooms(self) -> Iterator[Any]:
        counts: dict[str, list[int]] = {}
        for (tenant, _), room in self._s.domain.rooms.rooms.items():
            c = counts.setdefault(tenant, [0, 0])
            c[0] += 1
            c[1] += len(room.participants)
        for i, (name, doc) in enumerate(
            (("rooms", "Open rooms"), ("participants", "Participants"))
        ):
            family = GaugeMetricFamily(f"edgedispatch_{name}", doc, labels=["tenant"])
            for tenant, c in sorted(counts.items()):
                family.add_metric([tenant], c[i])
            yield family
        if self._s.tracks is not None:
            family = GaugeMetricFamily(
                "edgedispatch_tracks", "Tracks published in live rooms", labels=["tenant"]
            )
            for tenant, n in sorted(self._s.tracks().items()):
                family.add_metric([tenant], n)
            yield family
        if self._s.media_packets is not None:
            received, forwarded = self._s.media_packets()
            yield CounterMetricFamily(
                "edgedispatch_media_packets_received",
                "RTP packets received from publishers (and callers) by the media workers",
                value=received,
            )
            yield CounterMetricFamily(
                "edgedispatch_media_packets_forwarded",
                "Packets (video: frames) forwarded to subscribers, one per subscriber",
                value=forwarded,
            )

    def _agents(self) -> Iterator[Any]:
        if self._s.agents is None:
            return
        rows = self._s.agents()
        labels = ["tenant", "agent", "kind"]
        for name, doc, field in (
            ("agent_processes", "Processes of local agents", "processes"),
            ("agent_memory_bytes", "Unique memory of local agents' processes", "memory_bytes"),
            ("agent_running_jobs", "Jobs local agents run", "running_jobs"),
        ):
            family = GaugeMetricFamily(f"edgedispatch_{name}", doc, labels=labels)
            for row in rows:
                family.add_metric([row.tenant, row.agent, row.kind], getattr(row, field))
            yield family

    def _store(self) -> Iterator[Any]:
        if self._s.store_commits is not None:
            yield _histogram(
                "edgedispatch_store_commit_seconds",
                "Time of each store commit (its writes wait for it)",
                self._s.store_commits(),
            )
        if self._s.store_pending is not None:
            yield GaugeMetricFamily(
                "edgedispatch_store_pending_writes",
                "Writes queued and not yet committed",
                value=self._s.store_pending(),
            )

    def _sip(self) -> Iterator[Any]:
        if self._s.sip_outcomes is not None:
            family = CounterMetricFamily(
                "edgedispatch_sip_calls",
                "SIP calls by their final answer (sent to the caller, or the callee's)",
                labels=["direction", "code"],
            )
            for direction, codes in sorted(self._s.sip_outcomes().items()):
                for code, n in sorted(codes.items()):
                    family.add_metric([direction, str(code)], n)
            yield family
        if self._s.sip_calls is not None:
            active: Counter[tuple[str, str]] = Counter(
                (call["tenant"], call["state"]) for call in self._s.sip_calls(None)
            )
            gauge = GaugeMetricFamily(
                "edgedispatch_sip_calls_active",
                "Bridged SIP calls now, by state (answering, ringing, active...)",
                labels=["tenant", "state"],
            )
            for pair, n in sorted(active.items()):
                gauge.add_metric(list(pair), n)
            yield gauge
