"""``bench dispatch``'s reading of the server's own latency histogram."""

from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from edgedispatch.cli.bench import server_view
from edgedispatch.dispatch.tally import LATENCY_BOUNDS
from edgedispatch.obs.metrics import Histogram, _histogram


def exposition(counts: server_view.Buckets) -> str:
    """The text /metrics shows for these cumulative counts (written here
    by hand in Prometheus's format, as the server writes it)."""
    lines = [f'{server_view.METRIC}{{le="{"+Inf" if math.isinf(b) else b}"}} {float(c)}'
             for b, c in counts.items()]  # fmt: skip
    return "# TYPE edgedispatch_dispatch_latency_seconds histogram\n" + "\n".join(lines) + "\n"


BEFORE: server_view.Buckets = {0.001: 10.0, 0.005: 10.0, 0.01: 10.0, math.inf: 10.0}
#: 100 more: 50 within 1 ms, 40 more within 5 ms, 9 more within 10 ms, 1 later.
AFTER: server_view.Buckets = {0.001: 60.0, 0.005: 100.0, 0.01: 109.0, math.inf: 110.0}


def test_the_exposition_parses_to_cumulative_counts_by_bound() -> None:
    assert server_view.parse(exposition(AFTER)) == AFTER
    assert server_view.parse("something_else 1.0\n") == {}


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        (0.25, 0.0005),  # 25 of the 50 in (0, 1 ms]: halfway
        (0.50, 0.001),  # the 50th: the first bucket's top
        (0.70, 0.003),  # 70th: 20 of the 40 in (1, 5 ms], halfway
        (0.99, 0.01),  # 99th: the last within 10 ms
        (1.00, 0.01),  # in +Inf: the last finite bound
    ],
)
def test_quantiles_interpolate_within_their_bucket(q: float, expected: float) -> None:
    assert server_view.quantile(BEFORE, AFTER, q) == pytest.approx(expected)


def test_the_share_within_a_bound_counts_only_the_window() -> None:
    assert server_view.share_within(BEFORE, AFTER, 0.01) == pytest.approx(99 / 100)
    assert server_view.share_within(BEFORE, AFTER, 0.005) == pytest.approx(90 / 100)
    assert math.isnan(server_view.share_within(AFTER, AFTER, 0.01))  # nothing observed
    assert math.isnan(server_view.quantile(AFTER, AFTER, 0.99))


def test_it_reads_the_servers_own_histogram() -> None:
    """The metric's name and bounds as the server renders them."""
    counts = [0] * (len(LATENCY_BOUNDS) + 1)
    counts[4] = 3  # three in (5, 10 ms]
    family = _histogram("edgedispatch_dispatch_latency_seconds", "doc",
                        Histogram(LATENCY_BOUNDS, counts, 0.021))  # fmt: skip

    class One:
        def collect(self) -> list[object]:
            return [family]

    registry = CollectorRegistry()
    registry.register(One())  # type: ignore[arg-type]
    parsed = server_view.parse(generate_latest(registry).decode())
    assert parsed[0.005] == 0 and parsed[0.01] == 3 and parsed[math.inf] == 3


def test_the_report_and_its_line_as_the_benches_print_them() -> None:
    view = server_view.report(BEFORE, AFTER)
    assert view == {"p50": 1.0, "p99": 10.0, "within_10ms": 0.99}
    assert server_view.summary(view) == "p50 1.0 ms, p99 10.0 ms, 99.00% within 10 ms"
    assert server_view.report(None, AFTER) is None  # /metrics did not answer
