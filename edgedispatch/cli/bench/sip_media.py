"""``edgedispatch bench sip --media``: concurrent bridged calls, each with
an agent-side participant publishing audio back, measured at the caller.

sipp places the calls (signalling only: sipp 3.6.1 shares one media
socket between its calls and cannot check what it receives), and each
call's SDP points at an RTP socket of this process (sipp's ``-inf``
gives every call its own number and port).  Each call's number is routed
by an individual rule to a room of its own, where a load process has a
participant publishing a 660 Hz tone and subscribed to the caller:
``sip_lean_agents`` (aiortc, pre-encoded Opus, ~0.8% of a core each), at
nice 0, as a far end on another machine would not be starved by the
server; or with ``sdk_agents`` the rtc SDK's (``sip_agents``, ~5% each),
at nice 10 as before.  Once the server's RTP reaches a socket, that
socket sends the server a 440 Hz PCMU stream on one 20 ms clock (the
caller's voice, so that the call is not hung up as silent).

Over the calls' steady window (after 2 s, before the last 0.5 s), per
call, as the caller hears it: 20 ms frames due (one every 20 ms from the
first packet in the window to the last) but not received, received
without the agent's tone (silence the server filled because the agent's
audio was late or lost), and received but not continuing the previous
frame's tone (audio the server dropped or padded); and the spacing of
the server's packets (its send clock as the phone sees it: p99 and max
of the gaps).  The lean agents count the same of the callers' 440 Hz.
Steps of more calls run until a step loses more than 0.1% of its frames
at either end, or the gaps' p99 passes 30 ms (the send clock's jitter
over 10 ms).  Each step also gives the CPU of each process (server,
media workers, agents, phones, sipp) and the kernel's UDP drops
(``host_counters``), to say where loss came from.

With ``dispatch_rate``, once a step's calls are answered and warmed up,
``bench dispatch`` (its driver and 50 simulated workers, in a process of
its own) sends CreateDispatch at that rate to the same server until the
calls' last half second, and the step reports its CreateDispatch ->
JS_RUNNING latency: the scheduler's loop beside the calls' media.
"""

from __future__ import annotations

import asyncio
import gc
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from array import array
from pathlib import Path
from typing import Any

import numpy as np

from edgedispatch.cli.bench import server_view
from edgedispatch.cli.bench.common import (
    free_media_port,
    free_port,
    percentile,
    start_server,
    stop,
)
from edgedispatch.cli.bench.dispatch import children
from edgedispatch.cli.bench.host_counters import (
    busy_seconds,
    cpu_seconds_by_group,
    run_queue_seconds_by_group,
    udp_drops,
)
from edgedispatch.config import DEV_KEY, DEV_SECRET
from edgedispatch.sip.rtp import RtpPacket, decode, encode, parse_rtp

TARGETS = {"calls_under_0.1%_loss": 30, "send_gap_p99_ms": 30.0, "dispatch_p99_ms": 10.0}
WARMUP = 2.0
AGENT_TONE = 660.0

SCENARIO = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="bench bridged call">
  <send retrans="500">
    <![CDATA[
      INVITE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:[field0]@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 1 INVITE
      Contact: sip:sipp@[local_ip]:[local_port]
      Max-Forwards: 70
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=user1 53655765 2353687637 IN IP4 127.0.0.1
      s=-
      c=IN IP4 127.0.0.1
      t=0 0
      m=audio [field1] RTP/AVP 0
      a=rtpmap:0 PCMU/8000

    ]]>
  </send>
  <recv response="100" optional="true" />
  <recv response="180" optional="true" />
  <recv response="200" rrs="true" />
  <send>
    <![CDATA[
      ACK sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch-5]
      From: <sip:[field0]@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: 1 ACK
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
  <pause milliseconds="HOLD_MS" />
  <send retrans="500">
    <![CDATA[
      BYE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch-7]
      From: <sip:[field0]@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: 2 BYE
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
  <recv response="200" />
</scenario>
"""


class Phone(asyncio.DatagramProtocol):
    """One call's caller side: what the server sends, timed, and a tone back."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.server: tuple[str, int] | None = None
        self.arrivals: list[tuple[float, int, bytes]] = []  # (time, seq, payload)
        self._loop = asyncio.get_running_loop()
        self._seq = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        try:
            packet = parse_rtp(data)
        except Exception:  # noqa: BLE001 - not RTP: not counted
            return
        if self.server is None:
            self.server = (str(addr[0]), int(addr[1]))
        if packet.payload_type == 0:
            self.arrivals.append((self._loop.time(), packet.sequence, packet.payload))

    def send(self, payload: bytes) -> None:
        if self.transport is not None and self.server is not None:
            self._seq += 1
            packet = RtpPacket(0, self._seq, self._seq * 160, 0x5EED, payload)
            self.transport.sendto(packet.pack(), self.server)


#: The agent's tone over one 20 ms frame at 8 kHz, to read its phase.
_PHASES = 2 * np.pi * AGENT_TONE * np.arange(160) / 8000
_BASIS = np.stack([np.cos(_PHASES), np.sin(_PHASES)], axis=1)
#: How far the tone's phase moves from one frame to the next (13.2 periods).
_STEP = 2 * np.pi * AGENT_TONE * 160 / 8000
#: A frame whose phase is further than this from where the previous one's
#: leads (radians; a frame dropped or 2 ms inserted moves it 1.26 or 2.1).
_JUMP = 0.5


def measure(phone: Phone, start: float, end: float) -> dict[str, Any]:
    """One caller's window: frames received, silent (the server filled
    silence), and discontinuous: audible frames whose tone does not continue
    the previous frame's (audio the server dropped, or a part-frame it
    padded), each counted as a frame lost."""
    window = [a for a in phone.arrivals if start <= a[0] <= end]
    # Due: a frame every 20 ms from the window's first packet to its last
    # (a send clock that stalls leaves fewer; a packet just outside the
    # window's edges, one of ~450 per call, is not counted lost).
    expected = round((window[-1][0] - window[0][0]) / 0.020) + 1 if window else 1
    silent = jumps = 0
    previous: float | None = None
    for _, _, payload in window:
        samples = np.frombuffer(decode("PCMU", payload), dtype=np.int16).astype(np.float64)
        if np.sqrt(np.mean(samples**2)) < 1500:  # the agent's tone: ~5600 RMS
            silent += 1
            previous = None
            continue
        c, s = samples @ _BASIS
        phase = float(np.arctan2(c, s))
        if previous is not None:
            off = (phase - previous - _STEP + np.pi) % (2 * np.pi) - np.pi
            jumps += bool(abs(off) > _JUMP)
        previous = phase
    gaps = [(b[0] - a[0]) * 1000 for a, b in zip(window, window[1:], strict=False)]
    return {
        "expected": expected,
        "received": len(window),
        "silent": silent,
        "discontinuous": jumps,
        "gap_p99": percentile(gaps, 0.99) if gaps else 0.0,
        "gap_max": max(gaps, default=0.0),
    }


async def _setup_rule(url: str) -> None:
    from livekit import api
    from livekit.protocol import sip as pb

    async with api.LiveKitAPI(url, DEV_KEY, DEV_SECRET) as lk:
        trunk = await lk.sip.create_inbound_trunk(
            pb.CreateSIPInboundTrunkRequest(
                trunk=pb.SIPInboundTrunkInfo(name="bench", numbers=["+15550100"])
            )
        )
        individual = pb.SIPDispatchRuleIndividual(room_prefix="call", no_randomness=True)
        await lk.sip.create_dispatch_rule(
            pb.CreateSIPDispatchRuleRequest(
                dispatch_rule=pb.SIPDispatchRuleInfo(
                    rule=pb.SIPDispatchRule(dispatch_rule_individual=individual),
                    trunk_ids=[trunk.sip_trunk_id],
                )
            )
        )


#: ``bench dispatch`` against a running server, in a process of its own
#: (argv: url, rate, seconds, server pid); prints its report as JSON.
DISPATCH = """
import json, resource, sys, time
from edgedispatch.cli.bench import dispatch
started = time.monotonic()
r = dispatch.run(50, float(sys.argv[2]), float(sys.argv[3]), url=sys.argv[1],
                 server_pid=int(sys.argv[4]))
r.pop("latency_samples_ms")
used = [resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
r["load_cpu_pct"] = round(100 * sum(u.ru_utime + u.ru_stime for u in used)
                          / (time.monotonic() - started), 1)
print(json.dumps(r))
"""


async def _dispatch_beside(url: str, rate: float, delay: float, seconds: float, pid: int) -> Any:
    """``bench dispatch`` at ``rate`` for ``seconds``, after ``delay``."""
    await asyncio.sleep(delay)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", DISPATCH, url, str(rate), str(seconds), str(pid),
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    out, _ = await proc.communicate()
    try:
        return json.loads(out.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None


async def _step(
    sip_port: int,
    url: str,
    workdir: Path,
    calls: int,
    seconds: float,
    dispatch_rate: float = 0.0,
    server_pid: int = 0,
    sdk_agents: bool = False,
    media_nice: int = 0,
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    numbers = [f"+1666{calls:03d}{i:04d}" for i in range(calls)]
    module = "sip_agents" if sdk_agents else "sip_lean_agents"
    agents = await asyncio.create_subprocess_exec(
        sys.executable, "-m", f"edgedispatch.cli.bench.{module}",
        url.replace("http://", "ws://"), DEV_KEY, DEV_SECRET, str(AGENT_TONE),
        *[f"call_{n}" for n in numbers],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        # The lean agents share the media workers' priority (a far end competes
        # with no one on its own machine; here, not with the control plane).
        preexec_fn=lambda: os.nice(10 if sdk_agents else media_nice),
    )  # fmt: skip
    assert agents.stdout is not None and agents.stdin is not None
    ready = await asyncio.wait_for(agents.stdout.readline(), 60 + calls)
    if not ready.startswith(b"ready"):
        raise RuntimeError("the agents' load process did not start")
    phones: list[Phone] = []
    for _ in range(calls):
        _, phone = await loop.create_datagram_endpoint(Phone, local_addr=("127.0.0.1", 0))
        phones.append(phone)
    rows = ["SEQUENTIAL"] + [
        f"{n};{p.transport.get_extra_info('sockname')[1]}"  # type: ignore[union-attr]
        for n, p in zip(numbers, phones, strict=True)
    ]
    (workdir / "calls.csv").write_text("\n".join(rows) + "\n")
    (workdir / "call.xml").write_text(SCENARIO.replace("HOLD_MS", str(int(seconds * 1000))))
    n = array("h", [int(8000 * math.sin(2 * math.pi * 440 * i / 8000)) for i in range(8000)])
    tone = encode("PCMU", n)

    async def voice() -> None:
        at, i = loop.time(), 0
        while True:
            chunk = tone[(i % 50) * 160 : (i % 50) * 160 + 160]
            for phone in phones:
                phone.send(chunk)
            i += 1
            at += 0.020
            await asyncio.sleep(max(0.0, at - loop.time()))

    # The steady window: the last call answered (sipp at 50 calls/s) plus
    # the warm-up, to half a second before the first BYE.
    started = loop.time()
    start = started + calls / 50 + WARMUP
    end = started + seconds - 0.5
    # The phones' own collections would delay what they send and when they
    # read (counted as the server's jitter): none while the calls run.
    gc.collect()
    gc.freeze()
    gc.disable()
    speaking = loop.create_task(voice())
    dispatching = (
        loop.create_task(
            _dispatch_beside(url, dispatch_rate, start - started, max(2.0, end - start - 1.0),
                             server_pid)
        )
        if dispatch_rate > 0
        else None
    )  # fmt: skip
    sipp = await asyncio.create_subprocess_exec(
        "sipp", f"127.0.0.1:{sip_port}", "-sf", str(workdir / "call.xml"),
        "-inf", str(workdir / "calls.csv"), "-s", "+15550100", "-m", str(calls),
        "-l", str(calls), "-r", "50", "-i", "127.0.0.1", "-p", str(free_port(udp_too=True)),
        "-mp", str(free_media_port()), "-nostdin", "-timeout", f"{seconds + 60:.0f}s",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=workdir,
    )  # fmt: skip
    watched = {"server": [server_pid], "media workers": children(server_pid),
               "agents (load)": [agents.pid], "phones (this process)": [os.getpid()],
               "sipp": [sipp.pid]}  # fmt: skip
    communicating = loop.create_task(sipp.communicate())
    await asyncio.sleep(max(0.0, start - loop.time()))
    cpu0, drops0 = cpu_seconds_by_group(watched), udp_drops()
    busy0, wait0 = busy_seconds(), run_queue_seconds_by_group(watched)
    await asyncio.sleep(max(0.0, end - loop.time()))
    cpu1, drops1 = cpu_seconds_by_group(watched), udp_drops()
    busy1, wait1 = busy_seconds(), run_queue_seconds_by_group(watched)
    out, _ = await communicating
    speaking.cancel()
    gc.enable()
    gc.unfreeze()
    beside = await dispatching if dispatching is not None else None
    agents.stdin.write(f"window {start} {end}\n".encode())
    agents.stdin.close()
    heard: dict[str, Any] = {}
    try:
        said = await asyncio.wait_for(agents.stdout.readline(), 60)
        if said.startswith(b"kept_up "):  # the SDK's load process
            heard = {"kept_up": float(said.split()[1])}
        elif said.startswith(b"{"):
            heard = json.loads(said)
        await asyncio.wait_for(agents.wait(), 30)
    except (TimeoutError, ValueError):
        agents.kill()
    ok = failed = 0
    for line in out.decode(errors="replace").splitlines():
        if "Successful call" in line:
            ok = int(line.split("|")[2].split()[0])
        elif "Failed call" in line:
            failed = int(line.split("|")[2].split()[0])
    per_call = [measure(p, start, end) for p in phones]
    ports = {p.transport.get_extra_info("sockname")[1] for p in phones if p.transport}
    server_ports = {p.server[1] for p in phones if p.server is not None}
    for p in phones:
        if p.transport is not None:
            p.transport.close()
    expected = sum(c["expected"] for c in per_call)
    missing = sum(max(0, c["expected"] - c["received"]) for c in per_call)
    silent = sum(c["silent"] for c in per_call)
    jumps = sum(c["discontinuous"] for c in per_call)
    # What the agents heard of the callers (the lean agents only).
    agent_expected = int(heard.get("expected", 0))
    agent_lost = agent_expected - int(heard.get("received", 0)) + int(heard.get("off_tone", 0))
    window = end - start
    return {
        "calls": calls,
        "successful": ok,
        "failed": failed + (calls - ok - failed),
        "answered_with_media": sum(1 for p in phones if p.server is not None),
        "packet_loss": missing / expected if expected else 1.0,
        # Frames lost as the caller hears them: missing, silent, or audio
        # that does not continue from the frame before.
        "frame_loss": (missing + silent + jumps) / expected if expected else 1.0,
        "discontinuous_frames": jumps,
        "send_gap_p99_ms": round(max((c["gap_p99"] for c in per_call), default=0.0), 1),
        "send_gap_max_ms": round(max((c["gap_max"] for c in per_call), default=0.0), 1),
        "agents_kept_up": float(heard.get("kept_up", 0.0)),
        # How late the agents' 20 ms clock ran (their send jitter, not the server's).
        "agents_clock_late_ms": {
            "p99": heard.get("clock_late_p99_ms"),
            "max": heard.get("clock_late_max_ms"),
        },
        # The callers' 440 Hz at the agents: frames missing or without it.
        "agent_frame_loss": agent_lost / agent_expected if agent_expected else None,
        # Datagrams the kernel dropped in the window (a full receive
        # buffer): at the phones' sockets, at the server's RTP sockets.
        "udp_drops": {
            "phones": sum(drops1.get(p, 0) - drops0.get(p, 0) for p in ports),
            "server_rtp": sum(drops1.get(p, 0) - drops0.get(p, 0) for p in server_ports),
        },
        # Each process's CPU over the window, in % of one core.
        "cpu_pct": {k: round(100 * (cpu1[k] - cpu0[k]) / window, 1) for k in cpu0},
        # Time each process was ready to run but waited for a core (ms per
        # second of the window, its threads added): CPU contention.
        "runqueue_wait_ms_per_s": {
            k: round(1000 * (wait1[k] - wait0[k]) / window, 1) for k in wait0
        },
        # The whole machine (of 100% per core): what other sessions' runs took shows here.
        "machine_busy_pct": round(100 * (busy1 - busy0) / window, 1),
        **(_dispatch_fields(beside, dispatch_rate) if dispatch_rate > 0 else {}),
    }


def _dispatch_fields(r: dict[str, Any] | None, rate: float) -> dict[str, Any]:
    if r is None:
        return {"dispatch": {"rate": rate, "error": "bench dispatch did not report"}}
    return {
        "dispatch": {
            "rate": rate,
            "sent": r["sent"],
            "completed": r["completed"],
            "errors": r["errors"],
            "p50_ms": r["latency_ms"]["p50"],
            "p99_ms": r["latency_ms"]["p99"],
            # Its driver's and simulated workers' CPU (% of one core), start-up included.
            "load_cpu_pct": r.get("load_cpu_pct"),
            # The server's own creation -> assignment (``server_view``).
            "server_assign_ms": r.get("server_assign_ms"),
        }
    }


def lost(row: dict[str, Any]) -> bool:
    """Whether a step failed: a call failed, more than 0.1% of 20 ms frames
    missing or silent at the callers or at the agents, or the send clock's
    jitter over 10 ms (the gaps' p99 over 30 ms)."""
    return bool(
        row["failed"]
        or row["frame_loss"] > 0.001
        or (row.get("agent_frame_loss") or 0.0) > 0.001
        or row["send_gap_p99_ms"] > TARGETS["send_gap_p99_ms"]
    )


def run(
    steps: list[int],
    seconds: float,
    dispatch_rate: float = 0.0,
    sdk_agents: bool = False,
    media_nice: int = 0,
    sched_slice: float = 0.0005,
) -> dict[str, Any]:
    """:param sdk_agents: the agents are rtc SDK participants (``sip_agents``)
    instead of the lean aiortc ones (``sip_lean_agents``).
    :param media_nice: the server's ``rtc.media_nice`` (the lean agents run
    at it too).
    :param sched_slice: the server's ``server.sched_slice``."""
    if not shutil.which("sipp"):
        raise RuntimeError("bench sip needs sipp (Debian: apt-get install sip-tester)")
    workdir = Path(tempfile.mkdtemp(prefix="edgedispatch-bench-sipmedia-"))
    sip_port = free_port(udp_too=True)
    config = workdir / "edgedispatch.toml"
    config.write_text(
        f"[server]\nsched_slice = {sched_slice}\n"
        f"[sip]\nenabled = true\nport = {sip_port}\nmedia_timeout = 0.0\n"
        f"[rtc]\nmedia_nice = {media_nice}\n"
        '[logging]\nlevel = "warning"\n'
    )
    server, url = start_server("--config", str(config), stderr=sys.stderr)
    rows: list[dict[str, Any]] = []
    try:
        _wait_ready(url)
        asyncio.run(_setup_rule(url))
        for calls in steps:
            row = asyncio.run(
                _step(sip_port, url, workdir, calls, seconds, dispatch_rate, server.pid,
                      sdk_agents, media_nice)
            )  # fmt: skip
            rows.append(row)
            if lost(row):
                break
    finally:
        stop(server)
        shutil.rmtree(workdir, ignore_errors=True)
    clean = [r["calls"] for r in rows if not lost(r)]
    return {
        "rows": rows,
        "agents": "rtc SDK" if sdk_agents else "lean (aiortc, pre-encoded Opus)",
        "media_nice": media_nice,
        "sched_slice": sched_slice,
        "max_calls_under_0.1%_loss": max(clean, default=0),
        "targets": TARGETS,
    }


def _wait_ready(url: str) -> None:
    for _ in range(100):
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=1):
                return
        except OSError:
            time.sleep(0.1)


def render(r: dict[str, Any]) -> str:
    lines = ["bridged calls (sipp signalling; RTP measured at each caller; an agent-side"]
    lines.append(f"participant per room publishing a tone back: {r.get('agents', 'rtc SDK')}):")
    for row in r["rows"]:
        heard = row.get("agent_frame_loss")
        lines.append(
            f"  {row['calls']:>3} calls: {row['successful']} completed, {row['failed']} failed, "
            f"{row['answered_with_media']} with media; at the callers: loss "
            f"{100 * row['packet_loss']:.3f}% packets, {100 * row['frame_loss']:.3f}% frames "
            f"(missing, silent or discontinuous: {row.get('discontinuous_frames', '-')}), "
            f"send gap p99 {row['send_gap_p99_ms']} ms, max "
            f"{row['send_gap_max_ms']} ms; at the agents: "
            + ("-" if heard is None else f"{100 * heard:.3f}% frames missing or off-tone")
            + f"; the agents' load process produced {100 * row['agents_kept_up']:.0f}% of "
            "real time"
        )
        late = row.get("agents_clock_late_ms") or {}
        if late.get("p99") is not None:
            lines.append(
                f"        the agents' send clock ran late by p99 {late['p99']} ms, "
                f"max {late['max']} ms"
            )
        drops = row.get("udp_drops")
        if drops is not None:
            lines.append(
                f"        UDP datagrams dropped by the kernel: {drops['phones']} at the phones, "
                f"{drops['server_rtp']} at the server's RTP sockets"
            )
        cpu = row.get("cpu_pct")
        if cpu:
            lines.append(
                "        CPU (% of one core): "
                + ", ".join(f"{k} {v:g}" for k, v in cpu.items())
                + f"; the machine: {row.get('machine_busy_pct')}"
            )
        waits = row.get("runqueue_wait_ms_per_s")
        if waits:
            lines.append(
                "        waiting for a core (ms per s): "
                + ", ".join(f"{k} {v:g}" for k, v in waits.items())
            )
        d = row.get("dispatch")
        if d is not None:
            lines.append(
                f"        beside them, CreateDispatch at {d['rate']:g}/s: "
                + (
                    d["error"]
                    if "error" in d
                    else f"{d['completed']}/{d['sent']} reached JS_RUNNING, {d['errors']} errors, "
                    f"p50 {d['p50_ms']} ms, p99 {d['p99_ms']} ms, its load processes "
                    f"{d.get('load_cpu_pct')}% of a core (target <= "
                    f"{TARGETS['dispatch_p99_ms']:g} ms: "
                    f"{'met' if d['p99_ms'] <= TARGETS['dispatch_p99_ms'] else 'NOT met'})"
                )
            )
            if view := (d.get("server_assign_ms") or None):
                lines.append(
                    "        the server's own view (creation -> assignment): "
                    + server_view.summary(view)
                )
    lines.append(
        f"most calls with under 0.1% of frames lost and send-clock jitter within 10 ms: "
        f"{r['max_calls_under_0.1%_loss']} (target >= {TARGETS['calls_under_0.1%_loss']})"
    )
    return "\n".join(lines)
