"""The server's own view of a bench run's dispatch latency: its
``edgedispatch_dispatch_latency_seconds`` histogram (a job's creation to
its first assignment, as the server times it), read from ``/metrics``
before and after the load.

``bench dispatch`` times CreateDispatch -> JS_RUNNING from outside: that
also holds the driver's and the simulated workers' own wake-ups, which on
a busy two-core box wait for a core as the server does.  The histogram
says how much of that is the server's: it covers the request's handling
and the offer's round trip to the worker, not the client's send or the
worker's JS_RUNNING.  Its buckets are coarse (2.5, 5, 10, 25 ms...), so
its quantiles are interpolated within one, as Prometheus's
``histogram_quantile`` does.
"""

from __future__ import annotations

import math
import re
import urllib.request

METRIC = "edgedispatch_dispatch_latency_seconds_bucket"
_BUCKET = re.compile(rf'^{METRIC}{{le="([^"]+)"}} ([0-9.e+]+)$', re.M)

#: Cumulative counts by upper bound (seconds; math.inf last).
Buckets = dict[float, float]


def scrape(url: str, timeout: float = 5.0) -> Buckets | None:
    """The histogram now, from ``url``'s /metrics (empty if it has none;
    None if /metrics did not answer: metrics off, or behind a token)."""
    try:
        with urllib.request.urlopen(f"{url}/metrics", timeout=timeout) as resp:
            text = resp.read().decode()
    except OSError:
        return None
    return parse(text)


def report(before: Buckets | None, after: Buckets | None) -> dict[str, float] | None:
    """What a bench reports of the window between two scrapes (in ms, and
    the share within 10 ms); None without both."""
    if before is None or after is None:
        return None
    return {
        "p50": round(1000 * quantile(before, after, 0.50), 2),
        "p99": round(1000 * quantile(before, after, 0.99), 2),
        "within_10ms": round(share_within(before, after, 0.01), 4),
    }


def summary(view: dict[str, float]) -> str:
    """``report``'s figures, as the benches print them."""
    return f"p50 {view['p50']} ms, p99 {view['p99']} ms, {view['within_10ms']:.2%} within 10 ms"


def parse(text: str) -> Buckets:
    return {
        (math.inf if le == "+Inf" else float(le)): float(count)
        for le, count in _BUCKET.findall(text)
    }


def quantile(before: Buckets, after: Buckets, q: float) -> float:
    """The ``q`` quantile (seconds) of what was observed between the two
    scrapes, interpolated linearly within its bucket; NaN if nothing was,
    and the last finite bound if it falls in +Inf."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    if not counts or counts[-1] <= 0:
        return math.nan
    rank = q * counts[-1]
    lower, below = 0.0, 0.0
    for bound, count in zip(bounds, counts, strict=True):
        if count >= rank:
            if math.isinf(bound):
                return lower
            inside = count - below
            return lower + (bound - lower) * ((rank - below) / inside if inside else 0.0)
        lower, below = bound, count
    return lower


def share_within(before: Buckets, after: Buckets, bound: float) -> float:
    """The share of what was observed between the scrapes that took at most
    ``bound`` seconds (a bucket's bound); NaN if nothing was."""
    total = after.get(math.inf, 0.0) - before.get(math.inf, 0.0)
    if total <= 0 or bound not in after:
        return math.nan
    return (after[bound] - before.get(bound, 0.0)) / total
