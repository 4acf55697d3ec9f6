"""``/metrics`` of a running server with a store: Prometheus' parser reads
it, and it shows the dispatches made and the store's commits."""

from __future__ import annotations

import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from .test_serve import ServeProcess, served  # noqa: F401 (a fixture)
from .test_store import call


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as resp:
        assert resp.headers["content-type"].startswith("text/plain; version=0.0.4")
        text = resp.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[s.name, tuple(sorted(s.labels.items()))] = s.value
    return out


def test_metrics_show_dispatches_waiting_and_store_commits(
    served: list[ServeProcess],  # noqa: F811
    loop_kind: str,
    tmp_path: Path,
) -> None:
    srv = ServeProcess(loop_kind, "--data-dir", str(tmp_path / "data"))
    served.append(srv)
    for i in range(3):
        status, answer = call(srv.url, "CreateDispatch", f"room-{i}", agent_name="support")
        assert status == 200, answer
    got = scrape(srv.url)
    # No worker for "support": its three jobs wait, and say why.
    waiting = (
        "edgedispatch_queue_depth",
        (("agent", "support"), ("reason", "NO_WORKERS"), ("tenant", "")),
    )
    assert got[waiting] == 3
    assert got["edgedispatch_jobs", (("state", "QUEUED"), ("tenant", ""))] == 3
    assert got["edgedispatch_rooms", (("tenant", ""),)] == 3
    # Each answer waited for its commit: the store committed at least once.
    assert got["edgedispatch_store_commit_seconds_count", ()] >= 1
    assert got["edgedispatch_store_pending_writes", ()] == 0
