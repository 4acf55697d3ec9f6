"""``edgedispatch dispatch ...`` and ``edgedispatch room ...``: a small
``lk``-style client over the official ``livekit-api`` package (and the
connection flags ``agent ...`` shares, in ``cli.agent_commands``)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from edgedispatch.cli.tables import format_table

DEFAULT_URL = "http://127.0.0.1:7880"


def add_connection_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", help=f"server URL (env LIVEKIT_URL; default {DEFAULT_URL})")
    parser.add_argument("--api-key", help="API key (env LIVEKIT_API_KEY)")
    parser.add_argument("--api-secret", help="API secret (env LIVEKIT_API_SECRET)")
    parser.add_argument(
        "--dev",
        action="store_true",
        help=(
            "talk to a server started with `serve --dev`, as `lk --dev` does: key devkey, "
            f"secret secret, URL {DEFAULT_URL}, ignoring LIVEKIT_*; "
            "--url, --api-key and --api-secret still win"
        ),
    )
    parser.add_argument("--json", action="store_true", help="print JSON")


def resolve_connection(args: argparse.Namespace, env: Mapping[str, str] = os.environ) -> None:
    """Fill in ``args.url``, ``api_key`` and ``api_secret``: from their flag,
    else ``--dev``'s, else the LIVEKIT_* environment.  ``--dev`` beats the
    environment because it is said on this command line, while LIVEKIT_*
    may be left over for another server."""
    from edgedispatch.config import DEV_KEY, DEV_SECRET

    dev = {"url": DEFAULT_URL, "api_key": DEV_KEY, "api_secret": DEV_SECRET}
    for field, var in (
        ("url", "LIVEKIT_URL"),
        ("api_key", "LIVEKIT_API_KEY"),
        ("api_secret", "LIVEKIT_API_SECRET"),
    ):
        if getattr(args, field) is None:
            setattr(args, field, dev[field] if args.dev else env.get(var))
    if args.url is None:
        args.url = DEFAULT_URL


def missing_keys(args: argparse.Namespace) -> bool:
    if args.api_key and args.api_secret:
        return False
    print(
        "edgedispatch: --api-key and --api-secret (or LIVEKIT_API_KEY and "
        "LIVEKIT_API_SECRET) are required; --dev uses the keys of `serve --dev`",
        file=sys.stderr,
    )
    return True


def add_commands(sub: Any) -> None:
    dispatch = sub.add_parser("dispatch", help="create, list and delete agent dispatches")
    dsub = dispatch.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = dsub.add_parser("create", help="dispatch an agent to a room")
    create.add_argument("--room", required=True, help="the room (created if it does not exist)")
    create.add_argument("--agent-name", required=True, help="the agent to dispatch")
    create.add_argument("--metadata", default="", help="the job's metadata, given to the agent")
    list_ = dsub.add_parser("list", help="the dispatches of a room, with their jobs")
    list_.add_argument("--room", required=True, help="the room whose dispatches to list")
    delete = dsub.add_parser("delete", help="delete a dispatch (its jobs are terminated)")
    delete.add_argument("--room", required=True, help="the room of the dispatch")
    delete.add_argument("--id", required=True, help="the dispatch id (AD_...)")
    for p in (create, list_, delete):
        add_connection_flags(p)
        p.set_defaults(func=run_dispatch)

    room = sub.add_parser("room", help="create, list and delete rooms")
    rsub = room.add_subparsers(dest="action", required=True, metavar="ACTION")
    rcreate = rsub.add_parser("create", help="create a room")
    rcreate.add_argument("name", help="the room's name")
    rcreate.add_argument(
        "--empty-timeout",
        type=int,
        default=0,
        metavar="SECONDS",
        help="close the room after this long without participants (default 0: the server's)",
    )
    rcreate.add_argument("--metadata", default="", help="the room's metadata")
    rcreate.add_argument(
        "--agent-name",
        action="append",
        default=[],
        help="dispatch this agent to the room (repeatable)",
    )
    rlist = rsub.add_parser("list", help="list rooms")
    rlist.add_argument("names", nargs="*", metavar="NAME", help="only these rooms (default: all)")
    rdelete = rsub.add_parser("delete", help="delete a room (its jobs are terminated)")
    rdelete.add_argument("name", help="the room to delete")
    for p in (rcreate, rlist, rdelete):
        add_connection_flags(p)
        p.set_defaults(func=run_room)


def _run(
    args: argparse.Namespace,
    call: Callable[[Any], Awaitable[Any]],
    show: Callable[[Any], str],
) -> int:
    """Runs ``call`` with a ``LiveKitAPI``; prints its answer as JSON with
    ``--json``, else ``show(answer)``."""
    from google.protobuf import json_format
    from livekit import api

    from edgedispatch.wire import tokens  # noqa: F401  (silences PyJWT's short-secret warning)

    resolve_connection(args)
    if missing_keys(args):
        return 2

    async def main() -> Any:
        async with api.LiveKitAPI(args.url, args.api_key, args.api_secret) as lk:
            return await call(lk)

    try:
        result = asyncio.run(main())
    except api.TwirpError as exc:
        print(f"edgedispatch: {exc.code}: {exc.message}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"edgedispatch: cannot reach {args.url}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        answer = result[0] if isinstance(result, tuple) else result
        items = answer if isinstance(answer, list) else [answer]
        print(json.dumps([json_format.MessageToDict(m) for m in items], indent=2))
    else:
        print(show(result), end="")
    return 0


async def job_waits(url: str, key: str, secret: str, room: str) -> dict[str, str]:
    """Why each waiting job of ``room`` waits, by job id: edgedispatch's own
    ``DispatchService/ListJobWaits`` (LiveKit's JobState has no field for
    it).  Empty from a server without it (LiveKit itself)."""
    import aiohttp
    from google.protobuf import json_format, struct_pb2
    from livekit import api
    from livekit.api.twirp_client import TwirpClient

    from edgedispatch.api.livekit import DISPATCH_SERVICE

    grants = api.VideoGrants(room_admin=True, room=room)
    token = api.AccessToken(key, secret).with_grants(grants).to_jwt()
    pkg, service = DISPATCH_SERVICE.split(".")
    async with aiohttp.ClientSession() as session:
        client = TwirpClient(session, url, pkg, failover=False)
        try:
            answer = await client.request(
                service,
                "ListJobWaits",
                api.ListAgentDispatchRequest(room=room),
                {"Authorization": f"Bearer {token}"},
                struct_pb2.Struct,
            )
        except api.TwirpError:
            return {}
    jobs = json_format.MessageToDict(answer).get("jobs", [])
    return {str(j["jobId"]): str(j["waiting"]) for j in jobs}


def format_dispatches(dispatches: list[Any], waits: dict[str, str], room: str) -> str:
    """``dispatch list``'s table: a waiting job shows why it waits."""

    def job(j: Any) -> str:
        if j.id in waits:
            return f"{j.id} {waits[j.id]}"
        return f"{j.id} {agent_status(j.state.status)}" + (
            f" ({j.state.error})" if j.state.error else ""
        )

    rows = [
        (d.id, d.room, d.agent_name, repr(d.metadata), ", ".join(job(j) for j in d.state.jobs))
        for d in dispatches
    ]
    header = ("ID", "ROOM", "AGENT", "METADATA", "JOBS")
    return format_table(header, rows, f"no dispatches in room {room!r}")


def format_rooms(rooms: list[Any]) -> str:
    rows = [
        (r.sid, r.name, str(r.num_participants), str(r.empty_timeout), repr(r.metadata))
        for r in rooms
    ]
    header = ("SID", "NAME", "PARTICIPANTS", "EMPTY TIMEOUT", "METADATA")
    return format_table(header, rows, "no rooms")


def agent_status(status: int) -> str:
    from livekit.protocol import agent

    return str(agent.JobStatus.Name(status)) if status in agent.JobStatus.values() else str(status)


def run_dispatch(args: argparse.Namespace) -> int:
    from livekit import api

    if args.action == "create":
        return _run(
            args,
            lambda lk: lk.agent_dispatch.create_dispatch(
                api.CreateAgentDispatchRequest(
                    agent_name=args.agent_name, room=args.room, metadata=args.metadata
                )
            ),
            lambda d: format_dispatches([d], {}, args.room),
        )
    if args.action == "list":
        from livekit.protocol import agent

        async def listed(lk: Any) -> tuple[list[Any], dict[str, str]]:
            dispatches = await lk.agent_dispatch.list_dispatch(args.room)
            jobs = [j for d in dispatches for j in d.state.jobs]
            waiting = any(j.state.status == agent.JS_PENDING for j in jobs)
            waits = (
                await job_waits(args.url, args.api_key, args.api_secret, args.room)
                if waiting
                else {}
            )
            return dispatches, waits

        return _run(args, listed, lambda got: format_dispatches(got[0], got[1], args.room))
    return _run(
        args,
        lambda lk: lk.agent_dispatch.delete_dispatch(args.id, args.room),
        lambda d: format_dispatches([d], {}, args.room),
    )


def run_room(args: argparse.Namespace) -> int:
    from livekit import api

    if args.action == "create":
        agents = [api.RoomAgentDispatch(agent_name=a) for a in args.agent_name]
        return _run(
            args,
            lambda lk: lk.room.create_room(
                api.CreateRoomRequest(
                    name=args.name,
                    empty_timeout=args.empty_timeout,
                    metadata=args.metadata,
                    agents=agents,
                )
            ),
            lambda room: format_rooms([room]),
        )
    if args.action == "list":

        async def rooms(lk: Any) -> list[Any]:
            return list((await lk.room.list_rooms(api.ListRoomsRequest(names=args.names))).rooms)

        return _run(args, rooms, format_rooms)

    async def delete(lk: Any) -> list[Any]:
        await lk.room.delete_room(api.DeleteRoomRequest(room=args.name))
        return []

    return _run(args, delete, lambda _: f"deleted room {args.name!r}\n")
