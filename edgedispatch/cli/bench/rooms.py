"""``edgedispatch bench rooms``: rooms with the unmodified ``livekit`` rtc SDK.

Against a server it starts (``serve --dev``), or any LiveKit-compatible
server given with ``--url`` (so the same numbers can be taken from another
server side by side).  All clients run on this machine (the audio rooms'
in load processes of their own, the others in this one):

- join: ``connect()`` to connected, one participant at a time, p50/p99;
- notices: how long after a participant is connected (or calls
  ``disconnect()``) another one in the room hears of it, p99;
- data: round trips of a reliable packet echoed by a second participant
  (1000 of them: with 100, the p99 was the slowest one), and the way there;
- audio rooms: k two-party rooms, each side publishing a tone and hearing
  the other's, for k in steps until more than 0.1% of the audio is lost or
  the p99 delay variation passes 30 ms; with the CPU of the server (own
  server: it and its media workers) per forwarded stream, and of the load
  processes holding the clients;
- dispatch beside rooms: ``bench dispatch`` at 1000/s against the same
  server while the most audio rooms that passed run, their clients at nice
  10 (load generators yielding the CPU to the server and the driver).

How a step is measured (``rooms_clients``, one load process per CPU): every
receiving side reads its remote track's WebRTC ``inbound-rtp`` statistics
once a second.  Frame loss is the larger of

- the share of the audio due (48 kHz, from the statistics' timestamps)
  that the receiver's jitter buffer had to conceal because its packet was
  lost or late (``concealedSamples``), or whose packets never came (neither
  received nor counted lost: the stream stopped), whichever is more; playout
  that fell behind counts as concealed, and a side whose track never
  arrived, or no packet of it, loses all (such sides are named, with what
  their publisher sent, so a silent publisher tells itself from a stalled
  forwarder);
- on the sides of every 5th room, which bring their decoded audio into
  Python: the share of 20 ms frames that did not carry the other side's
  tone at 30% of its amplitude or more, or did not arrive.

Delay variation is the RFC 3550 interarrival jitter each receiver computes
from RTP timestamps and arrival times (``inbound-rtp`` ``jitter``; libwebrtc
reports whole milliseconds): p99 over every side's readings in the step.
It is a smoothed estimate (gain 1/16) of the mean deviation of packet
spacing, not a p99 of per-packet delay.  Packet loss (sequence gaps) is
reported beside.
"""

from __future__ import annotations

import asyncio
import json
import os
import selectors
import subprocess
import sys
import time
from typing import Any

from edgedispatch.cli.bench.common import percentile, start_server, stop
from edgedispatch.cli.bench.dispatch import cpu_seconds, tree_cpu_seconds
from edgedispatch.config import DEV_KEY, DEV_SECRET

TARGETS = {
    "join_p50_ms": 150.0,
    "join_p99_ms": 400.0,
    "data_rtt_p99_ms": 10.0,
    "notice_p99_ms": 50.0,
    "audio_rooms": 30,
}
LOSS_LIMIT = 0.001
JITTER_LIMIT_MS = 30.0
BESIDE_NICE = 10  #: the room clients' niceness while dispatch is measured beside them


def token(identity: str, room: str, key: str, secret: str) -> str:
    from livekit import api

    grants = api.VideoGrants(room_join=True, room=room)
    return api.AccessToken(key, secret).with_identity(identity).with_grants(grants).to_jwt()


class Bench:
    def __init__(self, url: str, key: str, secret: str) -> None:
        from livekit import rtc

        self.rtc = rtc
        self.url, self.key, self.secret = url, key, secret
        #: Each measured latency in ms, by what it measures, for --plot.
        self.samples: dict[str, list[float]] = {}

    async def join(self, identity: str, room: str) -> Any:
        r = self.rtc.Room()
        await r.connect(self.url, token(identity, room, self.key, self.secret))
        return r

    async def joins(self, n: int) -> dict[str, float]:
        """Join latency, and how soon an observer hears of joins and leaves."""
        observer = await self.join("observer", "bench-join")
        seen: dict[str, float] = {}
        gone: dict[str, float] = {}
        observer.on(
            "participant_connected", lambda p: seen.setdefault(p.identity, time.monotonic())
        )
        observer.on(
            "participant_disconnected", lambda p: gone.setdefault(p.identity, time.monotonic())
        )
        joins, notices, leaves = [], [], []
        for i in range(n):
            start = time.monotonic()
            room = await self.join(f"joiner-{i}", "bench-join")
            connected = time.monotonic()
            joins.append(connected - start)
            await _until(lambda i=i: f"joiner-{i}" in seen, 5)
            notices.append(max(0.0, seen[f"joiner-{i}"] - connected))
            left = time.monotonic()
            await room.disconnect()
            await _until(lambda i=i: f"joiner-{i}" in gone, 5)
            leaves.append(max(0.0, gone[f"joiner-{i}"] - left))
        await observer.disconnect()
        ms = 1000.0
        self.samples["join (connect to connected)"] = [t * ms for t in joins]
        self.samples["join or leave heard by another"] = [t * ms for t in notices + leaves]
        return {
            "join_p50_ms": percentile(joins, 0.5) * ms,
            "join_p99_ms": percentile(joins, 0.99) * ms,
            "notice_p99_ms": percentile(notices + leaves, 0.99) * ms,
            "join_notice_p50_ms": percentile(notices, 0.5) * ms,
            "leave_notice_p50_ms": percentile(leaves, 0.5) * ms,
        }

    async def data_rtt(self, n: int, warmup: int = 20) -> dict[str, float]:
        """Round trips of a reliable packet, one at a time, after ``warmup``
        uncounted ones; and the way there (both ends are in this process:
        one clock)."""
        a = await self.join("ping", "bench-data")
        b = await self.join("echo", "bench-data")
        echoed: asyncio.Queue[float] = asyncio.Queue()
        heard: dict[bytes, float] = {}

        def on_b(packet: Any) -> None:
            heard[packet.data] = time.monotonic()
            asyncio.ensure_future(
                b.local_participant.publish_data(
                    packet.data, topic="pong", destination_identities=["ping"]
                )
            )

        b.on("data_received", on_b)
        a.on("data_received", lambda p: echoed.put_nowait(time.monotonic()))
        rtts, there = [], []
        for i in range(warmup + n):
            start = time.monotonic()
            await a.local_participant.publish_data(str(i).encode(), topic="ping")
            back = await asyncio.wait_for(echoed.get(), 5)
            if i >= warmup:
                rtts.append(back - start)
                there.append(heard[str(i).encode()] - start)
        await a.disconnect()
        await b.disconnect()
        self.samples["data round trip"] = [t * 1000 for t in rtts]
        return {
            "data_rtt_p50_ms": percentile(rtts, 0.5) * 1000,
            "data_rtt_p99_ms": percentile(rtts, 0.99) * 1000,
            "data_one_way_p50_ms": percentile(there, 0.5) * 1000,
            "data_one_way_p99_ms": percentile(there, 0.99) * 1000,
            "data_round_trips": len(rtts),
        }

    def audio_rooms(self, k: int, seconds: float, server_pid: int | None) -> dict[str, Any]:
        """k two-party tone rooms, their clients split over load processes."""
        procs = _clients(self.url, self.key, self.secret, k, seconds)
        try:
            # Joining takes ~0.1-0.2 s per participant; a load process that
            # is not measuring long after is overloaded itself: the step fails.
            deadline = time.monotonic() + 30 + 0.5 * k
            for proc in procs:
                line = _line_before(proc, deadline)
                if line != "measuring":
                    why = f"a load process did not start measuring: {line!r}"
                    return {"rooms": k, "frame_loss": 1.0, "error": why}
            cpu0 = tree_cpu_seconds(server_pid) if server_pid else None
            load0 = sum(cpu_seconds(p.pid) for p in procs)
            time.sleep(seconds)
            load = (sum(cpu_seconds(p.pid) for p in procs) - load0) / seconds
            cpu = (
                (tree_cpu_seconds(server_pid) - cpu0) / seconds
                if server_pid and cpu0 is not None
                else None
            )
            results = [_last_json(p.communicate(timeout=60 + seconds)[0]) for p in procs]
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
        out = {"rooms": k, **_losses(results), "load_cpu_pct": load * 100}
        if cpu is not None and server_pid:
            out["server_cpu_pct"] = cpu * 100
            out["cpu_pct_per_stream"] = cpu * 100 / (2 * k)
        return out


def _losses(results: list[dict[str, Any]]) -> dict[str, Any]:
    """One step's figures from its load processes' (``rooms_clients``)."""

    def total(name: str) -> float:
        return float(sum(r.get(name, 0) for r in results))

    played = total("due_samples")
    by_stats = total("lost_samples") / played if played else 1.0
    # Heard frames: the first chunk of each ear marks the start, and a
    # frame per ear of shortfall is the chunks' timing noise.
    missing = max(0.0, total("missing_frames") - total("heard"))
    heard = total("heard_frames") + missing
    off_tone = total("off_tone_frames")
    by_ear = (off_tone + missing) / heard if heard else 1.0
    jitter = [j for r in results for j in r["jitter_ms"]]
    return {
        "frame_loss": max(by_stats, by_ear),
        "lost_by_stats": by_stats,
        "lost_by_ear": by_ear,
        "packet_loss": total("packets_lost") / max(1.0, total("packets")),
        "heard_streams": int(total("heard")),
        "off_tone_frames": int(off_tone),
        "sides_without_track": int(total("dead")),
        "sides_without_rtp": [side for r in results for side in r["silent"]],
        "jitter_p50_ms": percentile(jitter, 0.5),
        "jitter_p99_ms": percentile(jitter, 0.99),
    }


def _line_before(proc: subprocess.Popen[str], deadline: float) -> str:
    """The process's next line of output, or "" at the deadline."""
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(max(0.0, deadline - time.monotonic())):
            return ""
    return proc.stdout.readline().strip()


def _last_json(out: str) -> dict[str, Any]:
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"a load process printed no result: {out[-300:]!r}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def _clients(
    url: str, key: str, secret: str, k: int, seconds: float, nice: int = 0
) -> list[subprocess.Popen[str]]:
    """Load processes holding k rooms between them (one per CPU), at ``nice``."""
    parts = max(1, min(k, len(os.sched_getaffinity(0))))
    procs, first = [], 0
    for i in range(parts):
        count = k // parts + (1 if i < k % parts else 0)
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "edgedispatch.cli.bench.rooms_clients",
                    url,
                    key,
                    secret,
                    str(first),
                    str(count),
                    str(seconds),
                    str(nice),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
                env={**os.environ, "PYTHONWARNINGS": "ignore"},
            )  # fmt: skip
        )
        first += count
    return procs


async def _until(predicate: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("the other participant never heard of it")
        await asyncio.sleep(0.001)


def run(
    url: str | None = None,
    api_key: str = DEV_KEY,
    api_secret: str = DEV_SECRET,
    *,
    joins: int = 20,
    round_trips: int = 1000,
    steps: tuple[int, ...] = (5, 10, 20, 30, 40, 60),
    seconds: float = 10.0,
    dispatch_rate: float = 1000.0,
) -> dict[str, Any]:
    try:
        import livekit.rtc  # noqa: F401
    except ImportError:
        return {
            "error": "bench rooms needs the livekit rtc SDK: pip install 'edgedispatch[agents]'"
        }
    server = None
    if url is None:
        server, http = start_server()
        url = http.replace("http://", "ws://")
    report: dict[str, Any] = {
        "url": url,
        "server": "own" if server else "given",
        "targets": TARGETS,
    }
    try:
        bench = Bench(url, api_key, api_secret)
        pid = server.pid if server is not None else None

        async def main() -> None:
            report.update(await bench.joins(joins))
            report.update(await bench.data_rtt(round_trips))

        asyncio.run(main())
        report["latency_samples_ms"] = bench.samples  # for --plot (not printed)
        passed = 0
        report["audio"] = []
        for k in steps:
            step = bench.audio_rooms(k, seconds, pid)
            report["audio"].append(step)
            if step["frame_loss"] > LOSS_LIMIT or step.get("jitter_p99_ms", 0) > JITTER_LIMIT_MS:
                break
            passed = k
        report["audio_rooms"] = passed
        if dispatch_rate > 0:
            report["dispatch_beside_rooms"] = _dispatch_beside(
                bench, max(report["audio_rooms"], steps[0]), url, pid, dispatch_rate
            )
    finally:
        if server is not None:
            stop(server)
    report["cpus"] = len(os.sched_getaffinity(0))
    return report


def _dispatch_beside(
    bench: Bench, k: int, url: str, pid: int | None, rate: float, nice: int = BESIDE_NICE
) -> dict[str, Any]:
    """``bench dispatch`` at ``rate`` against the same server while k audio
    rooms run.  Their clients are load generators in processes of their own,
    at ``nice``: on a shared machine they then yield the CPU to the server
    and the dispatch driver, and the figure is the server's dispatch loop
    beside the rooms' media, not the clients' share of the CPU."""
    from edgedispatch.cli.bench import dispatch

    procs = _clients(bench.url, bench.key, bench.secret, k, 0, nice)
    try:
        for proc in procs:
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "ready":
                raise RuntimeError("a load process failed")
        http = url.replace("ws://", "http://").replace("wss://", "https://")
        result = dispatch.run(50, rate, 10.0, url=http, server_pid=pid)
    finally:
        for proc in procs:
            if proc.stdin is not None:
                proc.stdin.close()
        for proc in procs:
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
    return {"rooms": k, "rate": rate, "latency_ms": result["latency_ms"], "clients_nice": nice,
            "completed": result["completed"], "sent": result["sent"]}  # fmt: skip


def render(r: dict[str, Any]) -> str:
    if "error" in r:
        return str(r["error"])
    t = r["targets"]
    lines = [
        f"rooms on {r['url']} ({r['server']} server; clients: the livekit rtc SDK, "
        f"{r['cpus']} CPUs shared)",
        f"join (connect to connected)  p50 {r['join_p50_ms']:7.1f} ms  p99 "
        f"{r['join_p99_ms']:7.1f} ms   target <= {t['join_p50_ms']:.0f} / {t['join_p99_ms']:.0f}",
        f"join/leave notice            p99 {r['notice_p99_ms']:7.1f} ms"
        f"   (join p50 {r['join_notice_p50_ms']:.1f}, leave p50 {r['leave_notice_p50_ms']:.1f})"
        f"   target <= {t['notice_p99_ms']:.0f}",
        f"data round trip              p50 {r['data_rtt_p50_ms']:7.1f} ms  p99 "
        f"{r['data_rtt_p99_ms']:7.1f} ms   target p99 <= {t['data_rtt_p99_ms']:.0f}"
        f"   (of {r['data_round_trips']}; one way p50 {r['data_one_way_p50_ms']:.1f}, "
        f"p99 {r['data_one_way_p99_ms']:.1f})",
        "two-party audio rooms (each side a tone):",
    ]
    for step in r["audio"]:
        cpu = (
            f"  server+media CPU {step['server_cpu_pct']:5.1f}% "
            f"({step['cpu_pct_per_stream']:.2f}% per forwarded stream)"
            if "server_cpu_pct" in step
            else ""
        )
        if "error" in step:
            lines.append(f"  {step['rooms']:3d} rooms: {step['error']}")
            continue
        lines.append(
            f"  {step['rooms']:3d} rooms: frame loss {100 * step['frame_loss']:6.3f}%  jitter "
            f"p50/p99 {step['jitter_p50_ms']:.0f}/{step['jitter_p99_ms']:.0f} ms  "
            f"load CPU {step['load_cpu_pct']:.0f}%{cpu}"
        )
        lines.append(
            f"             (stats: {100 * step['lost_by_stats']:.3f}% concealed or missing, "
            f"{100 * step['packet_loss']:.3f}% packets lost; ears: "
            f"{100 * step['lost_by_ear']:.3f}% off tone or missing on {step['heard_streams']})"
        )
        if step["sides_without_rtp"] or step["sides_without_track"]:
            lines.append(
                f"             no track: {step['sides_without_track']} sides; no RTP "
                f"(publisher>listener): {' '.join(step['sides_without_rtp']) or '-'}"
            )
    from edgedispatch.cli.tables import markdown_table

    measured = [step for step in r["audio"] if "error" not in step]
    lines += [
        "",
        markdown_table(
            ("rooms", "frame loss %", "jitter p50 ms", "jitter p99 ms", "load CPU %"),
            [
                [
                    step["rooms"],
                    round(100 * step["frame_loss"], 3),
                    step["jitter_p50_ms"],
                    step["jitter_p99_ms"],
                    step["load_cpu_pct"],
                ]  # fmt: skip
                for step in measured
            ],
        ),
        "",
    ]
    lines.append(
        f"rooms under {100 * LOSS_LIMIT:.1f}% loss and {JITTER_LIMIT_MS:.0f} ms p99 jitter: "
        f"{r['audio_rooms']} (target >= {t['audio_rooms']})"
    )
    beside = r.get("dispatch_beside_rooms")
    if beside:
        lat = beside["latency_ms"]
        lines.append(
            f"dispatch at {beside['rate']:g}/s beside {beside['rooms']} audio rooms "
            f"(their clients at nice {beside.get('clients_nice', 0)}): "
            f"p50 {lat['p50']} ms, p99 {lat['p99']} ms "
            f"({beside['completed']}/{beside['sent']} reached JS_RUNNING; target p99 <= 10)"
        )
    return "\n".join(lines)
