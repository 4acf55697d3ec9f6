"""``bench ... --plot FILE.png``: latency distributions, drawn with
matplotlib (the ``bench`` extra): a histogram and the cumulative share of
samples at or under each latency, one line per series, on a log scale so
that the tail shows next to the median."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

#: Said when matplotlib is not installed.
MISSING = "bench --plot needs matplotlib: pip install 'edgedispatch[bench]'"


def available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def latency_plot(path: str, title: str, series: Mapping[str, Sequence[float]]) -> int:
    """Draws ``series`` (label -> latencies in ms) into ``path``; returns
    how many series had samples."""
    import matplotlib

    matplotlib.use("Agg")  # no display: a file only
    import matplotlib.pyplot as plt

    drawn = {label: sorted(v) for label, v in series.items() if v}
    fig, (hist, cdf) = plt.subplots(1, 2, figsize=(12, 4.5))
    low = min((v[0] for v in drawn.values()), default=0.01)
    high = max((v[-1] for v in drawn.values()), default=1.0)
    low = max(low, 1e-6)  # a log scale: no zero (the core decides in ~0.0002 ms)
    high = max(high, low * 1.01)
    bins = [low * (high / low) ** (i / 40) for i in range(41)]
    for label, values in drawn.items():
        hist.hist(values, bins=bins, histtype="step", label=f"{label} (n={len(values)})")
        n = len(values)
        cdf.step(values, [(i + 1) / n for i in range(n)], where="post", label=label)
    for ax in (hist, cdf):
        ax.set_xscale("log")
        ax.set_xlabel("latency (ms)")
        ax.grid(True, which="both", alpha=0.3)
    hist.set_ylabel("samples")
    cdf.set_ylabel("share of samples at or under")
    cdf.axhline(0.99, color="grey", linestyle=":", linewidth=1)
    if drawn:
        hist.legend(fontsize="small")
        cdf.legend(fontsize="small")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return len(drawn)
