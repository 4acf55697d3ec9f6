"""An unmodified livekit-agents worker, as a user would write one.

Driven by environment variables set by the tests:
  EDT_OUT    folder where each job writes <job id>.json with what it saw
  EDT_AGENT  the agent name it registers (default "test-agent")
  EDT_MODE   record (default): record and shut down; sleep: record, then
             run until terminated (writes <job id>.terminated when asked to
             stop); reject: decline every job (terminate=False);
             connect: join the room (ctx.connect()), greet everyone over
             data, answer "ping" with "pong <identity>", and record
             <job id>.left once the room is gone
  EDT_LOAD   the load it reports (default 0)
  PORT       its health server's port, as edgedispatch gives each agent
             server it runs (livekit-agents' own default is 8081, which a
             second agent server on the host could not bind)
"""

import asyncio
import json
import os
from pathlib import Path

from livekit import rtc
from livekit.agents import AgentServer, JobContext, JobRequest, cli

OUT = Path(os.environ.get("EDT_OUT", "."))


def publish(name: str, text: str) -> None:
    """Write ``name`` whole at once (a test waiting for the file reads it
    as soon as it appears: write_text makes it empty first)."""
    tmp = OUT / f".{name}.tmp"
    tmp.write_text(text)
    tmp.rename(OUT / name)


MODE = os.environ.get("EDT_MODE", "record")

# The default load gate reads whole-machine CPU; a busy test box would make
# the worker refuse work, so the tests pin the load.
LOAD = float(os.environ.get("EDT_LOAD", "0"))
server = AgentServer(
    load_fnc=lambda: LOAD,
    load_threshold=0.9,
    num_idle_processes=1,
    port=int(os.environ.get("PORT", 8081)),
)


async def on_request(req: JobRequest) -> None:
    if MODE == "reject":
        await req.reject(terminate=False)
    else:
        await req.accept(attributes={"seen.by": "py-agent"})


@server.rtc_session(agent_name=os.environ.get("EDT_AGENT", "test-agent"), on_request=on_request)
async def entrypoint(ctx: JobContext) -> None:
    job = ctx.job
    record = {
        "job_id": job.id,
        "dispatch_id": job.dispatch_id,
        "agent_name": job.agent_name,
        "room": job.room.name,
        "room_sid": job.room.sid,
        "ctx_room": ctx.room.name,
        "metadata": job.metadata,
        "attributes": dict(job.attributes),
        "identity": ctx.token_claims().identity,
        "kind": ctx.token_claims().kind,
        "token_attributes": ctx.token_claims().attributes,
        "token_room": ctx.token_claims().video.room,
        "url": ctx._info.url,
        "pid": os.getpid(),
        "worker_pid": os.getppid(),
    }
    tmp = OUT / f".{job.id}.tmp"
    tmp.write_text(json.dumps(record, default=str))
    tmp.rename(OUT / f"{job.id}.json")
    if MODE == "connect":
        await converse(ctx)
        return
    if MODE == "sleep":

        async def on_shutdown(reason: str) -> None:
            publish(f"{job.id}.terminated", reason)

        ctx.add_shutdown_callback(on_shutdown)
        await asyncio.sleep(3600)
    ctx.shutdown()


async def converse(ctx: JobContext) -> None:
    await ctx.connect()
    room = ctx.room
    left = asyncio.get_running_loop().create_future()

    def on_data(packet: rtc.DataPacket) -> None:
        if packet.topic == "ping" and packet.participant is not None:
            reply = f"pong {packet.participant.identity}".encode()
            asyncio.ensure_future(
                room.local_participant.publish_data(
                    reply, topic="pong", destination_identities=[packet.participant.identity]
                )
            )

    def on_track(track: rtc.Track, *_: object) -> None:
        if track.kind == rtc.TrackKind.KIND_AUDIO:
            asyncio.ensure_future(hear(room, track))

    room.on("data_received", on_data)
    room.on("track_subscribed", on_track)
    room.on("disconnected", lambda reason: left.done() or left.set_result(str(reason)))
    await room.local_participant.publish_data(b"hello", topic="greeting")
    reason = await left
    publish(f"{ctx.job.id}.left", reason)


async def hear(room: rtc.Room, track: rtc.Track) -> None:
    """Listen to a user's audio for a second, and say what was heard."""
    import numpy as np

    stream = rtc.AudioStream(track, sample_rate=48000, num_channels=1)
    chunks, skip = [], 50  # the first half second: the decoder starting
    async for event in stream:
        if skip:
            skip -= 1
            continue
        chunks.append(np.frombuffer(event.frame.data, dtype=np.int16).astype(np.float64))
        if len(chunks) >= 100:
            break
    await stream.aclose()
    samples = np.concatenate(chunks)
    heard = {
        "rms": float(np.sqrt(np.mean(samples**2))),
        "peak": float(np.argmax(np.abs(np.fft.rfft(samples))) * 48000 / len(samples)),
    }
    await room.local_participant.publish_data(json.dumps(heard).encode(), topic="heard")


if __name__ == "__main__":
    cli.run_app(server)
