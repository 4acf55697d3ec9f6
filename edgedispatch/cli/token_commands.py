"""``edgedispatch token create``: access tokens as ``lk token create``
makes them, minted by ``livekit-api``'s ``AccessToken`` (never by hand).

The subset of lk's flags kept: the grants ``--join``, ``--admin``,
``--list``, ``--create``, ``--allow-update-metadata``, ``--allow-source``
and ``--grant JSON``; the participant's ``--identity``, ``--name``,
``--metadata`` and ``--attribute``; ``--valid-for``; an agent dispatched
when the participant joins (``--agent``, ``--job-metadata``,
``--deployment``, as the token's room configuration); ``--token-only`` and
``--json``.  ``--agent-admin`` is edgedispatch's own: the grant its
``AgentService`` (``edgedispatch agent ...``) asks for.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from datetime import timedelta
from typing import Any

from edgedispatch.cli.client import missing_keys, resolve_connection

#: lk's --allow-source names -> the grant's source names.
_SOURCES = {
    "camera": "camera",
    "microphone": "microphone",
    "screen_share": "screen_share",
    "screen_share_audio": "screen_share_audio",
}

#: The video grants that are not booleans, and their JSON type.
_GRANT_TYPES: dict[str, type] = {"room": str, "destination_room": str, "can_publish_sources": list}

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(h|m|s)")


def valid_for(text: str) -> timedelta:
    """lk's (Go's) durations: ``5m``, ``1h10m``, ``90s``, ``24h``."""
    if not text or _DURATION.sub("", text) != "":
        raise argparse.ArgumentTypeError(f"expected a duration such as 5m, 1h10m or 90s: {text!r}")
    unit = {"h": 3600.0, "m": 60.0, "s": 1.0}
    seconds = sum(float(n) * unit[u] for n, u in _DURATION.findall(text))
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"the token must be valid for some time: {text!r}")
    return timedelta(seconds=seconds)


def _attribute(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def add_commands(sub: Any) -> None:
    token = sub.add_parser("token", help="create access tokens, as lk token create does")
    tsub = token.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = tsub.add_parser(
        "create",
        help="create an access token",
        description="Create an access token signed with --api-key/--api-secret (or "
        "LIVEKIT_API_KEY/SECRET, or --dev).  With no grant flag, --join is assumed.",
    )
    create.add_argument("--room", help="the room the token is for (--join and --admin need it)")
    create.add_argument(
        "--identity", "-i", help="the participant's unique identity (--join needs it)"
    )
    create.add_argument("--name", "-n", help="the participant's name (default: its identity)")
    create.add_argument("--metadata", help="the participant's metadata (JSON, say)")
    create.add_argument(
        "--attribute",
        type=_attribute,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a participant attribute (repeatable)",
    )
    create.add_argument("--join", action="store_true", help="may join the room")
    create.add_argument("--admin", action="store_true", help="may moderate the room")
    create.add_argument("--list", action="store_true", help="may list rooms")
    create.add_argument("--create", action="store_true", help="may create and delete rooms")
    create.add_argument(
        "--allow-update-metadata",
        action="store_true",
        help="may update its own name, metadata and attributes",
    )
    create.add_argument(
        "--allow-source",
        action="append",
        default=[],
        choices=sorted(_SOURCES),
        metavar="SOURCE",
        help="may publish only these sources (repeatable; default all): "
        + ", ".join(sorted(_SOURCES)),
    )
    create.add_argument(
        "--grant",
        metavar="JSON",
        help="more video grant fields, named as LiveKit names them, merged in: "
        "'{\"canPublish\": false}'",
    )
    create.add_argument(
        "--agent-admin",
        action="store_true",
        help="may manage the agents edgedispatch runs (edgedispatch's AgentService)",
    )
    create.add_argument(
        "--agent",
        metavar="AGENT_NAME",
        help="dispatch this agent to the room when the participant joins (with --join)",
    )
    create.add_argument("--job-metadata", default="", help="the dispatched agent's job metadata")
    create.add_argument("--deployment", default="", help="the dispatched agent's deployment")
    create.add_argument(
        "--valid-for",
        type=valid_for,
        default=valid_for("5m"),
        metavar="TIME",
        help="how long the token is valid: 5m, 1h10m, 90s (default 5m)",
    )
    create.add_argument("--api-key", help="sign with this API key (env LIVEKIT_API_KEY)")
    create.add_argument("--api-secret", help="its secret (env LIVEKIT_API_SECRET)")
    create.add_argument(
        "--dev", action="store_true", help="sign with the keys of `serve --dev` (devkey/secret)"
    )
    create.add_argument("--url", help="the server URL shown with the token (env LIVEKIT_URL)")
    out = create.add_mutually_exclusive_group()
    out.add_argument("--token-only", action="store_true", help="print only the token")
    out.add_argument(
        "--json", action="store_true", help="print the token, identity, room and grants as JSON"
    )
    create.set_defaults(func=run_token)


def _camel_to_field(name: str) -> str:
    return re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), name)


def video_grants(args: argparse.Namespace) -> Any:
    """The VideoGrants the flags ask for.  ValueError says what is wrong."""
    import dataclasses

    from livekit import api

    grants = api.VideoGrants(
        room=args.room or "",
        room_join=args.join or None,
        room_admin=args.admin or None,
        room_list=args.list or None,
        room_create=args.create or None,
        can_update_own_metadata=args.allow_update_metadata or None,
        can_publish_sources=[_SOURCES[s] for s in args.allow_source] or None,
    )
    if args.grant:
        try:
            extra = json.loads(args.grant)
        except ValueError as exc:
            raise ValueError(f"--grant is not JSON: {exc}") from None
        if not isinstance(extra, dict):
            raise ValueError("--grant must be a JSON object of video grant fields")
        fields = {f.name for f in dataclasses.fields(grants)}
        for key, value in extra.items():
            field = _camel_to_field(key)
            if field not in fields:
                raise ValueError(f"--grant: unknown video grant {key!r}")
            wanted = _GRANT_TYPES.get(field, bool)
            if not isinstance(value, wanted):
                raise ValueError(f"--grant: {key} must be a JSON {wanted.__name__}")
            setattr(grants, field, value)
    return grants


def run_token(args: argparse.Namespace) -> int:
    from livekit import api

    from edgedispatch.wire import tokens  # noqa: F401  (silences PyJWT's short-secret warning)

    resolve_connection(args)
    if missing_keys(args):
        return 2
    any_grant = args.join or args.admin or args.list or args.create or args.grant
    if not any_grant and not args.agent_admin:
        args.join = True
        if not (args.token_only or args.json):
            print("no grant given: --join assumed", file=sys.stderr)
    try:
        grants = video_grants(args)
    except ValueError as exc:
        print(f"edgedispatch: {exc}", file=sys.stderr)
        return 2
    problem = _missing(args, grants)
    if problem:
        print(f"edgedispatch: {problem}", file=sys.stderr)
        return 2
    token = api.AccessToken(args.api_key, args.api_secret).with_grants(grants)
    token = token.with_ttl(args.valid_for)
    if args.identity:
        token = token.with_identity(args.identity).with_name(args.name or args.identity)
    elif args.name:
        token = token.with_name(args.name)
    if args.metadata:
        token = token.with_metadata(args.metadata)
    if args.attribute:
        token = token.with_attributes(dict(args.attribute))
    if args.agent_admin:
        token = token.with_agent_grants(api.AgentGrants(admin=True))
    if args.agent:
        dispatch = api.RoomAgentDispatch(
            agent_name=args.agent, metadata=args.job_metadata, deployment=args.deployment
        )
        token = token.with_room_config(api.RoomConfiguration(agents=[dispatch]))
    jwt = token.to_jwt()
    _print(args, jwt)
    return 0


def _missing(args: argparse.Namespace, grants: Any) -> str:
    """What the flags lack for the token to be of use ("" if nothing)."""
    if grants.room_join and not args.identity:
        return "--join needs --identity (the participant's identity)"
    if (grants.room_join or grants.room_admin) and not grants.room:
        return "--join and --admin need --room"
    if args.agent and not grants.room_join:
        return "--agent dispatches the agent when the participant joins: it needs --join"
    return ""


def _print(args: argparse.Namespace, jwt: str) -> None:
    import jwt as pyjwt

    claims = pyjwt.decode(jwt, options={"verify_signature": False})
    grants = {k: v for k, v in claims.items() if k not in ("iss", "nbf", "exp", "jti")}
    if args.token_only:
        print(jwt)
    elif args.json:
        out = {
            "access_token": jwt,
            "identity": args.identity or "",
            "name": claims.get("name", ""),
            "room": args.room or "",
            "grants": grants,
        }
        print(json.dumps(out, indent=2))
    else:
        print("Token grants:")
        print(json.dumps(grants, indent=2))
        print()
        print("Project URL:", args.url)
        print("Access token:", jwt)
