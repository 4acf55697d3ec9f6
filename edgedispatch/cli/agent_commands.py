"""``edgedispatch agent ...``: manage the agents edgedispatch runs itself,
through ``edgedispatch.AgentService`` (see the README's "AgentService").

``--command`` and ``--worker`` take the program and its arguments either
as one string, split as a POSIX shell would (``shlex``): ``--command "sh -c
'echo hi'"``, or as the rest of the command line, so that arguments that look
like options stay the program's: ``--command sh -c 'echo hi'`` or
``--command -- sh -c 'echo hi'``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from typing import Any

import msgspec

from edgedispatch.cli.client import add_connection_flags, missing_keys, resolve_connection
from edgedispatch.config.agents import AgentDefinition

#: StartAgent's own wait, unless --timeout says otherwise.
START_TIMEOUT = 30.0

_DEFAULTS = {f.name: f.default for f in msgspec.structs.fields(AgentDefinition)}


def _argv(text: str) -> list[str]:
    try:
        argv = shlex.split(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"cannot split {text!r}: {exc}") from None
    if not argv:
        raise argparse.ArgumentTypeError("an empty command")
    return argv


#: The flags whose value is a program with its arguments.
_PROGRAM_FLAGS = ("--command", "--worker")


class AgentParser(argparse.ArgumentParser):
    """``agent``'s subcommands' parser: after ``--command``/``--worker``,
    ``-- PROGRAM ARGS...`` or ``PROGRAM ARGS...`` (a first word without a
    space) is the rest of the command line, joined into the one word the
    flag takes (and ``_argv`` splits back), so that the program's own
    ``-c`` is not taken for an option of ours.  A first word with a space
    is the quoted form: other flags may follow it."""

    def parse_known_args(  # type: ignore[override]
        self, args: Any = None, namespace: Any = None
    ) -> tuple[argparse.Namespace, list[str]]:
        words = list(sys.argv[1:] if args is None else args)
        for n, word in enumerate(words[:-1]):
            if word not in _PROGRAM_FLAGS:
                continue
            rest = words[n + 1 :]
            if rest[0] == "--":
                rest = rest[1:]
            elif not rest[0] or any(c.isspace() for c in rest[0]):
                break
            words[n + 1 :] = [shlex.join(rest)] if rest else []
            break
        return super().parse_known_args(words, namespace)


def _env_pair(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


#: (flag, field, type, metavar, help) of every definition field but the kind's.
_FIELDS: list[tuple[str, str, Any, str, str]] = [
    ("--prewarm", "prewarm", str, "MODULE:FUNCTION",
     "native: run once in each pool process, before its job"),
    ("--slots", "slots", int, "N", "native, command: jobs at once"),
    ("--idle", "idle", int, "N", "native: pool processes kept ready for the next jobs"),
    ("--memory-limit-mb", "memory_limit_mb", float, "MB",
     "per job, or per agent-server instance, for the whole process tree; 0: none"),
    ("--max-duration", "max_duration", float, "SECONDS", "per job; 0: none"),
    ("--max-processes", "max_processes", int, "N",
     "processes and threads per job or instance, the whole tree: a fork bomb stops there"),
    ("--min-instances", "min_instances", int, "N", "agent server: instances kept running"),
    ("--max-instances", "max_instances", int, "N",
     "agent server: at most this many (one more starts while jobs wait and all are full)"),
    ("--idle-timeout", "idle_timeout", float, "SECONDS",
     "agent server: instances beyond --min-instances stop after this long without jobs"),
    ("--cwd", "cwd", str, "DIR", "working directory of the program (command, worker)"),
]  # fmt: skip


def add_agent_commands(sub: Any) -> None:
    agent = sub.add_parser("agent", help="agents edgedispatch runs itself (definitions)")
    asub = agent.add_subparsers(
        dest="action", required=True, metavar="ACTION", parser_class=AgentParser
    )
    add = asub.add_parser(
        "add",
        help="add a definition (kept across restarts)",
        description=(
            "Add an agent definition.  --command and --worker take the program and its "
            "arguments as the rest of the command line (put other flags before them): "
            "--command sh -c 'echo hi', or --command -- sh -c 'echo hi'; or as one "
            "string, split as a shell would, which other flags may follow: "
            "--command \"sh -c 'echo hi'\" --slots 2."
        ),
    )
    add.add_argument("name", help="the agent name dispatches ask for")
    kind = add.add_mutually_exclusive_group(required=True)
    kind.add_argument(
        "--entrypoint",
        metavar="MODULE:FUNCTION",
        help="native: an async function run for each job in a warm pool process",
    )
    kind.add_argument(
        "--command",
        type=_argv,
        metavar="PROGRAM ARGS",
        help="command: a program started once per job (LIVEKIT_TOKEN and the job in its env); "
        "the rest of the command line (after --, or not), or one quoted string",
    )
    kind.add_argument(
        "--worker",
        type=_argv,
        metavar="PROGRAM ARGS",
        help="agent server: a LiveKit agent server program started on demand "
        "(LIVEKIT_URL, its own LIVEKIT_API_KEY/SECRET and PORT in its env); "
        "the rest of the command line (after --, or not), or one quoted string",
    )
    for flag, field, type_, metavar, text in _FIELDS:
        default = _DEFAULTS[field]
        shown = f" (default {default})" if default not in ("", None) else ""
        add.add_argument(flag, dest=field, type=type_, metavar=metavar, help=text + shown)
    add.add_argument(
        "--env",
        type=_env_pair,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an environment variable of the program (repeatable)",
    )
    add.add_argument(
        "--bind",
        action="append",
        default=[],
        dest="binds",
        metavar="PATH[:rw]",
        help="a path of the host its processes see, read-only, or read-write with :rw "
        "(the operator's key only; repeatable)",
    )
    list_ = asub.add_parser("list", help="list definitions, with each instance's state")
    remove = asub.add_parser("remove", help="remove a definition added through the API")
    start = asub.add_parser(
        "start",
        help="take jobs again; an agent server is brought up, and this returns once it "
        "has registered (or says why not)",
    )
    start.add_argument(
        "--timeout",
        type=float,
        default=START_TIMEOUT,
        metavar="SECONDS",
        help=f"how long to wait for an agent server to register (default {START_TIMEOUT:g})",
    )
    stop = asub.add_parser(
        "stop", help="take no jobs; every agent-server instance is stopped (until start)"
    )
    for p in (remove, start, stop):
        p.add_argument("name", help="the agent's name")
    for p in (add, list_, remove, start, stop):
        add_connection_flags(p)
        p.set_defaults(func=run_agent)


def request(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """The AgentService method and JSON body the command line asks for."""
    if args.action == "list":
        return "ListAgents", {}
    if args.action == "remove":
        return "RemoveAgent", {"name": args.name}
    if args.action == "start":
        return "StartAgent", {"name": args.name, "timeout": args.timeout}
    if args.action == "stop":
        return "StopAgent", {"name": args.name}
    definition: dict[str, Any] = {"name": args.name}
    for field in ("entrypoint", "command", "worker", *(f[1] for f in _FIELDS)):
        value = getattr(args, field)
        if value is not None:
            definition[field] = value
    if args.env:
        definition["env"] = dict(args.env)
    if args.binds:
        definition["binds"] = list(args.binds)
    return "AddAgent", {"agent": definition}


def run_agent(args: argparse.Namespace) -> int:
    """Talks to edgedispatch.AgentService with a token carrying the agent
    admin grant, signed with the given key."""
    resolve_connection(args)
    if missing_keys(args):
        return 2
    from edgedispatch.cli import agent_client as client

    method, body = request(args)
    # A start waits for the agent server: the HTTP call waits longer.
    timeout = body.get("timeout", 0) + 30 if method == "StartAgent" else 60
    try:
        status, out = client.call(args.url, args.api_key, args.api_secret, method, body,
                                  timeout=timeout)  # fmt: skip
    except OSError as exc:
        print(f"edgedispatch: cannot reach {args.url}: {exc}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"edgedispatch: {out.get('code')}: {out.get('msg')}", file=sys.stderr)
        return 1
    if args.json or args.action == "add":
        print(json.dumps(out, indent=2))
    elif args.action == "list":
        print(format_agents(out.get("agents", []), time.time()), end="")
    elif args.action in ("start", "stop"):
        print(format_agents([out["agent"]], time.time()), end="")
    return 0


# -- the table ---------------------------------------------------------------------


def _runs(agent: dict[str, Any]) -> str:
    if agent.get("entrypoint"):
        return str(agent["entrypoint"])
    return shlex.join(agent.get("command") or agent.get("worker") or [])


def _instance(item: dict[str, Any], now: float) -> str:
    """One instance in words: its state, then what explains it."""
    words = [str(item["state"])]
    if "pid" in item:
        words.append(f"pid {item['pid']}")
    if item.get("workers"):
        words.append("worker " + ", ".join(item["workers"]))
    if item.get("last_exit") and item["state"] in ("backing off", "crashed"):
        words.append(item["last_exit"])
    if item.get("crashes", 0) > 1 and item["state"] in ("backing off", "crashed"):
        words.append(f"{item['crashes']} crashes in a row")
    if "next_attempt_at" in item:
        at = time.strftime("%H:%M:%S", time.localtime(item["next_attempt_at"]))
        words.append(f"next attempt at {at} (in {max(0.0, item['next_attempt_at'] - now):.0f} s)")
    return ", ".join(words)


def format_agents(agents: list[dict[str, Any]], now: float) -> str:
    """``agent list``'s table: one row per agent, and under an agent
    server one row per instance."""
    if not agents:
        return "no agents in this tenant\n"
    header = ("NAME", "KIND", "STATE", "SOURCE", "RUNS")
    rows = [header]
    details: list[list[str]] = []
    for a in agents:
        rows.append((a["name"], a["kind"], a["state"], a["source"], _runs(a)))
        details.append(
            [f"  instance {i['instance']}: {_instance(i, now)}" for i in a.get("instances", [])]
        )
    widths = [max(len(r[c]) for r in rows) for c in range(len(header) - 1)]
    lines = []
    for n, row in enumerate(rows):
        cells = [cell.ljust(w) for cell, w in zip(row, widths, strict=False)]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
        if n:
            lines.extend(details[n - 1])
    return "\n".join(lines) + "\n"
