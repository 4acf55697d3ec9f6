"""``edgedispatch dispatch ...`` and ``edgedispatch room ...``: a small
``lk``-style client over the official ``livekit-api`` package."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

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


def _missing_keys(args: argparse.Namespace) -> bool:
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
    create.add_argument("--room", required=True)
    create.add_argument("--agent-name", required=True)
    create.add_argument("--metadata", default="")
    list_ = dsub.add_parser("list", help="the dispatches of a room, with their jobs")
    list_.add_argument("--room", required=True)
    delete = dsub.add_parser("delete", help="delete a dispatch (its jobs are terminated)")
    delete.add_argument("--room", required=True)
    delete.add_argument("--id", required=True, help="the dispatch id (AD_...)")
    for p in (create, list_, delete):
        add_connection_flags(p)
        p.set_defaults(func=run_dispatch)

    room = sub.add_parser("room", help="create, list and delete rooms")
    rsub = room.add_subparsers(dest="action", required=True, metavar="ACTION")
    rcreate = rsub.add_parser("create", help="create a room")
    rcreate.add_argument("name")
    rcreate.add_argument("--empty-timeout", type=int, default=0)
    rcreate.add_argument("--metadata", default="")
    rcreate.add_argument(
        "--agent-name",
        action="append",
        default=[],
        help="dispatch this agent to the room (repeatable)",
    )
    rlist = rsub.add_parser("list", help="list rooms")
    rlist.add_argument("names", nargs="*")
    rdelete = rsub.add_parser("delete", help="delete a room (its jobs are terminated)")
    rdelete.add_argument("name")
    for p in (rcreate, rlist, rdelete):
        add_connection_flags(p)
        p.set_defaults(func=run_room)


def add_agent_commands(sub: Any) -> None:
    agent = sub.add_parser("agent", help="agents edgedispatch runs itself (definitions)")
    asub = agent.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = asub.add_parser("add", help="add a definition (kept across restarts)")
    add.add_argument("name")
    kind = add.add_mutually_exclusive_group(required=True)
    kind.add_argument("--entrypoint", help="native: pkg.module:function")
    kind.add_argument("--command", nargs="+", help="one program per job")
    kind.add_argument("--worker", nargs="+", help="an agent server started on demand")
    add.add_argument("--prewarm", help="native: pkg.module:function run once per process")
    add.add_argument("--slots", type=int, help="jobs at once (native, command)")
    add.add_argument("--memory-limit-mb", type=float)
    add.add_argument("--max-duration", type=float)
    add.add_argument("--idle-timeout", type=float, help="agent server: stop after idle seconds")
    add.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
    add.add_argument("--cwd")
    add.add_argument(
        "--bind",
        action="append",
        default=[],
        metavar="PATH[:rw]",
        dest="binds",
        help="a path its processes see, read-only (or :rw); operator only (repeatable)",
    )
    list_ = asub.add_parser("list", help="list definitions")
    parsers = [add, list_]
    for action in ("remove", "start", "stop"):
        p = asub.add_parser(action, help=f"{action} a definition")
        p.add_argument("name")
        parsers.append(p)
    for p in parsers:
        add_connection_flags(p)
        p.set_defaults(func=run_agent)


def run_agent(args: argparse.Namespace) -> int:
    """Talks to edgedispatch.AgentService with a token carrying the agent
    admin grant, signed with the given key."""
    resolve_connection(args)
    if _missing_keys(args):
        return 2
    method, body = {
        "list": ("ListAgents", {}),
        "remove": ("RemoveAgent", {"name": getattr(args, "name", "")}),
        "start": ("StartAgent", {"name": getattr(args, "name", "")}),
        "stop": ("StopAgent", {"name": getattr(args, "name", "")}),
    }.get(args.action, ("AddAgent", {}))
    if args.action == "add":
        definition: dict[str, Any] = {"name": args.name}
        for field in (
            "entrypoint",
            "command",
            "worker",
            "prewarm",
            "slots",
            "memory_limit_mb",
            "max_duration",
            "idle_timeout",
            "cwd",
        ):
            value = getattr(args, field)
            if value is not None:
                definition[field] = value
        if args.binds:
            definition["binds"] = args.binds
        if args.env:
            definition["env"] = dict(pair.split("=", 1) for pair in args.env)
        body = {"agent": definition}
    from edgedispatch.cli import agent_client as client

    try:
        status, out = client.call(args.url, args.api_key, args.api_secret, method, body)
    except OSError as exc:
        print(f"edgedispatch: cannot reach {args.url}: {exc}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"edgedispatch: {out.get('code')}: {out.get('msg')}", file=sys.stderr)
        return 1
    if args.json or args.action == "add":
        print(json.dumps(out, indent=2))
    elif args.action == "list":
        for a in out.get("agents", []):
            what = a.get("entrypoint") or " ".join(a.get("command") or a.get("worker") or [])
            print(f"{a['name']}\t{a['kind']}\t{a['state']}\t{a['source']}\t{what}")
    return 0


def _run(args: argparse.Namespace, call: Callable[[Any], Awaitable[Any]]) -> int:
    from google.protobuf import json_format
    from livekit import api

    from edgedispatch.wire import tokens  # noqa: F401  (silences PyJWT's short-secret warning)

    resolve_connection(args)
    if _missing_keys(args):
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
        items = result if isinstance(result, list) else [result]
        print(json.dumps([json_format.MessageToDict(m) for m in items], indent=2))
    else:
        _print_table(result)
    return 0


def _print_table(result: Any) -> None:
    from livekit.protocol import agent_dispatch, models

    items = result if isinstance(result, list) else [result]
    for item in items:
        if isinstance(item, agent_dispatch.AgentDispatch):
            jobs = ", ".join(
                f"{j.id} {agent_status(j.state.status)}"
                + (f" ({j.state.error})" if j.state.error else "")
                for j in item.state.jobs
            )
            print(
                f"{item.id}\troom={item.room}\tagent={item.agent_name}\t"
                f"metadata={item.metadata!r}\tjobs=[{jobs}]"
            )
        elif isinstance(item, models.Room):
            print(
                f"{item.sid}\t{item.name}\tempty_timeout={item.empty_timeout}\t"
                f"metadata={item.metadata!r}"
            )


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
        )
    if args.action == "list":
        return _run(args, lambda lk: lk.agent_dispatch.list_dispatch(args.room))
    return _run(args, lambda lk: lk.agent_dispatch.delete_dispatch(args.id, args.room))


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
        )
    if args.action == "list":

        async def rooms(lk: Any) -> list[Any]:
            return list((await lk.room.list_rooms(api.ListRoomsRequest(names=args.names))).rooms)

        return _run(args, rooms)

    async def delete(lk: Any) -> list[Any]:
        await lk.room.delete_room(api.DeleteRoomRequest(room=args.name))
        return []

    return _run(args, delete)
