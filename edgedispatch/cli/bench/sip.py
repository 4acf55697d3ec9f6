"""``edgedispatch bench sip``: the SIP signalling path, driven by sipp (Debian's
sip-tester) on loopback.

By default each call is answered: INVITE -> 100/180 -> 200 with our SDP ->
ACK -> BYE -> 200, through a real inbound trunk and dispatch rule (created
with ``livekit-api``) into rooms: an individual rule (a room per call), or
with ``--rule direct`` one room for every call.  Each answered call joins
its room as a SIP participant, gets an RTP port in a media worker, and
hears the server's 20 ms send clock until its BYE; no agent is dispatched
(the rule names none), so this measures SIP and rooms.  ``--refused``
measures the path every call takes first instead: INVITE in, parsed, a
transaction made, the trunks matched, 404 out (no trunk takes the
number), and its ACK absorbed.

For each rate it reports the calls sipp completed and failed, the rate
achieved, INVITE -> 200 (or 404) p50/p99 (sipp's response-time measure,
which moves in steps of sipp's clock: 4 ms on this machine), and the
highest rate sustained (90% of it achieved) with no failed call; the
rates stop at the first with a failed call.  sipp shares the machine's
cores.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from edgedispatch.cli.bench.common import free_port, percentile, start_server, stop
from edgedispatch.config import DEV_KEY, DEV_SECRET

TARGETS = {"cps_with_0_failed": 500, "invite_p99_ms_at_100_cps": 50.0}
#: The number the bench's trunk takes (the refused path calls it too: no trunk).
NUMBER = "+15550100"

#: An answered call: 200 (with SDP) to the INVITE, timed; ACK; BYE after
#: HOLD_MS, answered 200.  Each call from a number of its own (one
#: identity, ``sip_<from>``, per participant of a room).
ANSWERED = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="bench answered call">
  <send retrans="500" start_rtd="1">
    <![CDATA[
      INVITE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: sipp <sip:+1555[call_number]@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 1 INVITE
      Contact: sip:sipp@[local_ip]:[local_port]
      Max-Forwards: 70
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=user1 53655765 2353687637 IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio [media_port] RTP/AVP 0
      a=rtpmap:0 PCMU/8000

    ]]>
  </send>
  <recv response="100" optional="true" />
  <recv response="180" optional="true" />
  <recv response="200" rtd="1" rrs="true">
    <action>
      <ereg regexp="m=audio [1-9][0-9]* RTP/AVP 0" search_in="body" check_it="true" assign_to="m" />
    </action>
  </recv>
  <Reference variables="m" />
  <send>
    <![CDATA[
      ACK sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch-5]
      From: sipp <sip:+1555[call_number]@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
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
      From: sipp <sip:+1555[call_number]@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
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

#: A call no trunk takes: 404, ACKed.
REFUSED = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="bench invite">
  <send retrans="500" start_rtd="1">
    <![CDATA[
      INVITE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: sipp <sip:+15550199@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 1 INVITE
      Contact: sip:sipp@[local_ip]:[local_port]
      Max-Forwards: 70
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=user1 53655765 2353687637 IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio [media_port] RTP/AVP 0
      a=rtpmap:0 PCMU/8000

    ]]>
  </send>
  <recv response="100" optional="true" />
  <recv response="404" rtd="1" />
  <send>
    <![CDATA[
      ACK sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch-3]
      From: sipp <sip:+15550199@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: 1 ACK
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
</scenario>
"""


def _sipp(port: int, workdir: Path, rate: int, calls: int, hold_ms: int) -> dict[str, Any]:
    for old in workdir.glob("invite_*_rtt.csv"):
        old.unlink()
    started = time.monotonic()
    try:
        out = subprocess.run(
            ["sipp", f"127.0.0.1:{port}", "-sf", str(workdir / "invite.xml"), "-m", str(calls),
             "-r", str(rate), "-l", str(max(int(rate * (2 + hold_ms / 1000)), 100)),
             "-s", NUMBER, "-i", "127.0.0.1", "-p", str(free_port(udp_too=True)), "-nostdin",
             "-timeout", f"{calls / rate + 30:.0f}s", "-trace_rtt", "-rtt_freq", "1",
             "-trace_stat", "-fd", "1"],
            capture_output=True, text=True, cwd=workdir, timeout=calls / rate + 60,
        ).stdout  # fmt: skip
    except subprocess.TimeoutExpired:  # an overloaded server can leave sipp stuck
        out = ""
    elapsed = time.monotonic() - started
    ok = failed = 0
    for line in out.splitlines():
        if "Successful call" in line:
            ok = int(line.split("|")[2].split()[0])
        elif "Failed call" in line:
            failed = int(line.split("|")[2].split()[0])
    times: list[float] = []
    for csv in workdir.glob("invite_*_rtt.csv"):
        for row in csv.read_text().splitlines()[1:]:
            fields = row.split(";")
            if len(fields) >= 2:
                times.append(float(fields[1]))
    return {
        "rate": rate,
        "calls": calls,
        "successful": ok,
        "failed": failed + (calls - ok - failed),  # not completed counts as failed
        "achieved_cps": round(ok / elapsed, 1) if elapsed else 0.0,
        "invite_ms": {"p50": percentile(times, 0.5), "p99": percentile(times, 0.99)},
        #: Each call's INVITE -> final answer, for --plot (not printed).
        "latency_samples_ms": times,
    }


async def _setup_rule(url: str, direct: bool) -> None:
    """A trunk for the bench's number and a rule into rooms (no agents)."""
    from livekit import api
    from livekit.protocol import sip as pb

    async with api.LiveKitAPI(url, DEV_KEY, DEV_SECRET) as lk:
        trunk = await lk.sip.create_inbound_trunk(
            pb.CreateSIPInboundTrunkRequest(
                trunk=pb.SIPInboundTrunkInfo(name="bench", numbers=[NUMBER])
            )
        )
        rule = (
            pb.SIPDispatchRule(dispatch_rule_direct=pb.SIPDispatchRuleDirect(room_name="bench"))
            if direct
            else pb.SIPDispatchRule(
                dispatch_rule_individual=pb.SIPDispatchRuleIndividual(room_prefix="call")
            )
        )
        await lk.sip.create_dispatch_rule(
            pb.CreateSIPDispatchRuleRequest(
                dispatch_rule=pb.SIPDispatchRuleInfo(rule=rule, trunk_ids=[trunk.sip_trunk_id])
            )
        )


def run(
    rates: list[int],
    seconds: float,
    refused: bool = False,
    rule: str = "individual",
    hold_ms: int = 0,
) -> dict[str, Any]:
    """:param refused: INVITE -> 404 (no trunk) instead of answered calls.
    :param rule: "individual" (a room per call) or "direct" (one room).
    :param hold_ms: how long each answered call stays up before its BYE."""
    if not shutil.which("sipp"):
        raise RuntimeError("bench sip needs sipp (Debian: apt-get install sip-tester)")
    workdir = Path(tempfile.mkdtemp(prefix="edgedispatch-bench-sip-"))
    scenario = REFUSED if refused else ANSWERED.replace("HOLD_MS", str(hold_ms))
    (workdir / "invite.xml").write_text(scenario)
    sip_port = free_port(udp_too=True)
    config = workdir / "edgedispatch.toml"
    config.write_text(
        # sipp sends every call from one address: no per-source limit; and
        # no limit on calls at once (the bench finds the server's).
        f"[sip]\nenabled = true\nport = {sip_port}\ninvite_rate = 0\nmax_calls = 0\n"
        "max_calls_per_tenant = 0\nmedia_timeout = 0.0\n"
        + ("[rtc]\nenabled = false\n" if refused else "")
        + '[logging]\nlevel = "warning"\n'
    )
    server, url = start_server("--config", str(config), stderr=sys.stderr)
    rows = []
    try:
        _wait_ready(url)
        if not refused:
            asyncio.run(_setup_rule(url, rule == "direct"))
            # The media workers start with the first room: not timed.
            _sipp(sip_port, workdir, 20, 20, hold_ms)
        for rate in rates:
            rows.append(_sipp(sip_port, workdir, rate, max(int(rate * seconds), 50), hold_ms))
            if rows[-1]["failed"]:
                break  # past the server's rate: what is left of the backlog would spoil the next
    finally:
        stop(server)
        shutil.rmtree(workdir, ignore_errors=True)
    # Sustained: all completed, none failed, and at 90% of the rate asked
    # (sipp slows down rather than fail when the answers come late).
    clean = [
        r["rate"]
        for r in rows
        if r["failed"] == 0
        and r["successful"] == r["calls"]
        and r["achieved_cps"] >= 0.9 * r["rate"]
    ]
    best = max(clean, default=0)
    # ... and answering within the latency target as well.
    quick = [
        r["rate"]
        for r in rows
        if r["rate"] in clean and r["invite_ms"]["p99"] <= TARGETS["invite_p99_ms_at_100_cps"]
    ]
    at_100 = next((r["invite_ms"]["p99"] for r in rows if r["rate"] == 100), None)
    met = {
        "cps_with_0_failed": best >= TARGETS["cps_with_0_failed"],
        "invite_p99_ms_at_100_cps": None
        if at_100 is None
        else at_100 <= TARGETS["invite_p99_ms_at_100_cps"],
    }
    return {
        "path": "refused" if refused else "answered",
        "rule": None if refused else rule,
        "hold_ms": None if refused else hold_ms,
        "rows": rows,
        "max_rate_with_0_failed": best,
        "max_rate_with_0_failed_and_p99_within_target": max(quick, default=0),
        "targets": TARGETS,
        "met": met,
    }


def _wait_ready(url: str) -> None:
    for _ in range(100):
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=1):
                return
        except OSError:
            time.sleep(0.1)


def _ms(value: float) -> str:
    # sipp's response times move in steps of its clock (4 ms here): 0 is "< one step".
    return "<4 ms" if value == 0 else f"{round(value):g} ms"


def render(r: dict[str, Any]) -> str:
    from edgedispatch.cli.tables import markdown_table

    header = ("calls/s asked", "calls", "completed", "failed", "achieved/s",
              "INVITE -> final p50", "p99")  # fmt: skip
    rows = [
        [
            row["rate"],
            row["calls"],
            row["successful"],
            row["failed"],
            row["achieved_cps"],
            _ms(row["invite_ms"]["p50"]),
            _ms(row["invite_ms"]["p99"]),
        ]  # fmt: skip
        for row in r["rows"]
    ]
    answered = r.get("path", "answered") == "answered"
    final = "200" if answered else "404"
    header = header[:5] + (f"INVITE -> {final} p50",) + header[6:]
    if answered:
        into = "a room per call" if r.get("rule") == "individual" else "one room"
        title = (
            f"INVITE -> 100/180 -> 200 (SDP) -> ACK -> BYE -> 200, through a trunk and "
            f"{r.get('rule')} rule ({into}, no agents), calls held {r.get('hold_ms')} ms, "
            "sipp on loopback:"
        )
    else:
        title = "INVITE -> 404 (no trunk) -> ACK, sipp on loopback:"
    lines = [title, "", markdown_table(header, rows), ""]
    met = r.get("met", {})

    def verdict(key: str) -> str:
        return {True: "met", False: "NOT met", None: "not measured (no 100/s row)"}[met.get(key)]

    at_100 = next((row["invite_ms"]["p99"] for row in r["rows"] if row["rate"] == 100), None)
    if answered:
        lines.append("against the targets (answered calls):")
    else:
        lines.append("against the targets (measured on INVITE -> 404; the targets are for")
        lines.append("answered calls, INVITE -> 200: run without --refused):")
    lines.append(
        f"  calls/s with 0 failed: {r['max_rate_with_0_failed']}/s "
        f"(target >= {TARGETS['cps_with_0_failed']}: {verdict('cps_with_0_failed')})"
    )
    if "max_rate_with_0_failed_and_p99_within_target" in r:
        lines.append(
            f"  (of which with INVITE -> {final} p99 <= "
            f"{TARGETS['invite_p99_ms_at_100_cps']:g} ms as well: "
            f"{r['max_rate_with_0_failed_and_p99_within_target']}/s)"
        )
    lines.append(
        f"  INVITE -> {final} p99 at 100 calls/s: "
        f"{'-' if at_100 is None else _ms(at_100)} (target <= "
        f"{TARGETS['invite_p99_ms_at_100_cps']:g} ms: {verdict('invite_p99_ms_at_100_cps')})"
    )
    return "\n".join(lines)
