"""Configuration: one frozen msgspec tree, read from TOML and the environment.

``load(path, dev=...)`` returns a validated ``Config`` or raises
``ConfigError`` naming the offending key; the server does not start then.

Keys come from ``[keys]`` in the file (``api_key = "secret"``), from the
``EDGEDISPATCH_KEYS`` environment variable (``"key: secret, key2: secret2"``,
LiveKit's ``LIVEKIT_KEYS`` format, which is read too), and ``--dev`` adds
``devkey: secret`` as ``livekit-server --dev`` does.
"""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path

import msgspec

from edgedispatch.config.agents import AgentDefinition, check_unique
from edgedispatch.config.agents import validate as validate_agent
from edgedispatch.errors import ConfigError

DEV_KEY, DEV_SECRET = "devkey", "secret"


class ServerConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    bind: str = "0.0.0.0"
    port: int = 7880
    #: JobAssignment.url: where agents should join rooms.  Empty: each worker
    #: uses its own LIVEKIT_URL (LiveKit's behaviour).
    public_url: str = ""
    #: WebSocket frames larger than this close the connection (code 1009).
    max_message_size: int = 2 * 1024 * 1024
    #: HTTP request bodies larger than this get 413.
    max_body_size: int = 2 * 1024 * 1024
    #: Seconds a client has to send a whole request head, from its first
    #: byte (or from connecting); then 408 and the connection closes.
    header_timeout: float = 10.0
    #: Seconds a client has to send the body its Content-Length promised.
    body_timeout: float = 30.0
    #: Seconds a keep-alive connection may sit idle between requests.
    idle_timeout: float = 120.0
    #: Open connections (HTTP and WebSocket) at most; further ones are
    #: closed at once.  0: as many as the file-descriptor limit allows.
    max_connections: int = 0
    #: The share of ``max_connections`` one peer address may hold (so that
    #: one client cannot take all of them).
    max_connections_per_peer: float = 0.5
    #: Seconds to wait for running jobs after SIGTERM before exiting.
    drain_timeout: float = 3600.0
    #: Where state that must survive a restart is kept: rooms, dispatches,
    #: jobs and agent definitions, in one SQLite database.  Empty:
    #: $STATE_DIRECTORY (systemd), else nothing is kept.
    data_dir: str = ""
    #: "full": an answered write survives a power loss (the WAL is fsynced
    #: at each commit); "normal": it survives a process crash only.
    store_synchronous: str = "full"
    #: The scheduler slice (seconds) the server's event loop, its media
    #: workers and its store writer ask Linux for (``edgedispatch.sched``:
    #: their wake-ups preempt long-running work on the box; Linux 6.12 or
    #: later).  0: the kernel's default.
    sched_slice: float = 0.0005
    #: WebSocket keepalive for workers: ping this often (0: never) ...
    ping_interval: float = 20.0
    #: ... and drop a worker whose pong is this late.
    ping_timeout: float = 20.0


class DispatchConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    #: Seconds a job waits for a worker before it fails NO_CAPACITY.
    queue_timeout: float = 60.0
    #: Seconds a worker has to answer an availability request.
    offer_timeout: float = 5.0
    max_attempts: int = 5
    retry_base: float = 0.1
    retry_max: float = 2.0
    #: Seconds a disconnected worker's running jobs wait to be claimed back.
    reclaim_grace: float = 10.0
    #: Seconds after a JobTermination before the job is ended regardless.
    terminate_grace: float = 20.0
    #: Workers reporting this load or more get no offers (LiveKit's target load).
    load_threshold: float = 0.7
    #: Hard cap of concurrent jobs per worker, on top of its load.
    worker_slots: int = 64
    #: Per agent name caps that override worker_slots.
    agent_slots: dict[str, int] = msgspec.field(default_factory=dict)
    #: End a job after this many seconds (0: never).  Node workers never
    #: report that a job ended, so this bounds how long their slots stay held.
    max_job_duration: float = 0.0
    #: Seed for the tie-break between equally loaded workers.
    seed: int = 0


class RoomConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    #: A room nobody joined closes after this many seconds.
    empty_timeout: int = 300
    #: A room closes this long after its last participant left.
    departure_timeout: int = 20
    #: CreateDispatch creates its room when it does not exist.
    auto_create: bool = True


class IceServerConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A STUN or TURN server clients are told to use (JoinResponse.ice_servers)."""

    urls: list[str]
    username: str = ""
    credential: str = ""


class RtcConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Rooms that LiveKit clients join at /rtc and /rtc/v1 (README: "Rooms")."""

    #: false: no /rtc routes (a dispatch-only server; rooms then live only
    #: as records, as before).
    enabled: bool = True
    #: The addresses host ICE candidates are offered on.  Empty: every
    #: address of the host, loopback included (aioice alone leaves loopback
    #: out, which would shut out clients on the box itself).
    interfaces: list[str] = msgspec.field(default_factory=list)
    #: [first, last]: the UDP ports media is sent and received on (one per
    #: participant connection), for firewalls; empty: any free port.
    #: Applies in the media workers.
    udp_ports: list[int] = msgspec.field(default_factory=list)
    #: STUN and TURN servers for clients behind NAT.  None by default: no
    #: request leaves the box unless the operator names a server.
    ice_servers: list[IceServerConfig] = msgspec.field(default_factory=list)
    #: Seconds between a client's pings, and before a silent client is
    #: dropped (LiveKit's values; the SDKs need both non-zero).
    ping_interval: int = 5
    ping_timeout: int = 15
    #: Processes the rooms' media runs in (a room lives wholly in one), so
    #: that it never takes the dispatch loop's time; 0: one per CPU.  They
    #: start with the first room.
    media_workers: int = 0
    #: How much the media workers yield the CPU to the server's own process
    #: (a nice increment, 0-19): on a box whose cores are all busy, the
    #: dispatch loop's answers then wait less and calls' audio more.
    media_nice: int = 0
    #: true: run the media in the server's own process instead (debugging).
    media_in_process: bool = False
    #: The LiveKit server version clients are told (JoinResponse): the SDKs
    #: gate features on it, and this is the release whose behaviour we match.
    server_version: str = "1.13.5"


class SandboxConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How tenant code is contained (README: "Containing tenant code")."""

    #: "auto": every protection this host offers, each logged at start-up;
    #: "required": refuse to start without a filesystem view, a uid per
    #: tenant and cgroups; "off": none (tenant code runs as the server).
    mode: str = "auto"
    #: Tenant number i (the default tenant first, then [[tenants]] in order)
    #: runs as uid and gid uid_base + i.
    uid_base: int = 61000
    #: Where each tenant's own directory is made (its HOME, read-write for
    #: it only).  Empty: <data_dir>/tenants, or a directory under /run or
    #: /tmp named after the server when there is no data directory.
    tenant_dirs: str = ""
    #: false: do not use cgroups even where the host has them (a subreaper
    #: keeps each job's processes together instead; README).
    cgroups: bool = True
    #: false: do not use bubblewrap even where it is installed.
    bubblewrap: bool = True


class LoggingConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    level: str = "info"
    format: str = "text"  #: "text" or "json" (one JSON object per line)


class TenantConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A customer: its own API keys, and everything made with them.

    What its keys may add through the API (``config.agents.authorize``):
    native agents from ``native_modules`` always; programs of its own
    (command agents, agent servers) only with ``allow_code``."""

    name: str
    keys: dict[str, str] = msgspec.field(default_factory=dict)
    #: It may add agents that run any program: command agents, agent
    #: servers, and native agents from any module.
    allow_code: bool = False
    #: Modules its native agents' entrypoint and prewarm may come from: a
    #: module, or a package and everything in it ("acme_agents",
    #: "shared.voice").
    native_modules: list[str] = msgspec.field(default_factory=list)
    #: Where its room, participant and track events are POSTed, signed with
    #: its first key (LiveKit's webhooks).
    webhook_urls: list[str] = msgspec.field(default_factory=list)
    #: Quotas (0: no limit); a call over one gets resource_exhausted naming
    #: it.  Jobs not ended, jobs waiting for a worker, rooms open at once,
    #: and CreateDispatch calls per second (bursts up to one second's worth).
    max_jobs: int = 0
    max_queued: int = 0
    max_rooms: int = 0
    max_dispatch_rate: float = 0.0
    #: Phone calls at once (past it 486 Busy Here); unset: ``[sip]
    #: max_calls_per_tenant``.
    max_calls: int | None = None


class WebhookConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """LiveKit's webhooks, for the default tenant (``urls``; each tenant
    names its own in ``webhook_urls``)."""

    urls: list[str] = msgspec.field(default_factory=list)
    #: Tries per event, with doubling waits from 1 s, before it is dropped.
    attempts: int = 5
    #: Seconds for one POST, connecting included.
    timeout: float = 5.0


class SipConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Phone calls (README: "SIP")."""

    #: Listen for SIP over UDP and TCP.  Off by default: a box opens port 5060
    #: to the network only when its operator asks.
    enabled: bool = False
    bind: str = ""  #: empty: the server's bind address
    port: int = 5060  #: UDP and TCP; 0: any free port
    #: Concurrent calls in all; past it a call gets 503 with Retry-After
    #: (0: no limit).  A bridged call costs a share of a core (see the README's
    #: benchmark); the default leaves room for signalling and rooms.
    max_calls: int = 200
    #: Concurrent calls of one tenant; past it its calls get 486 Busy Here,
    #: and the other tenants' calls go on (0: no limit).
    max_calls_per_tenant: int = 100
    #: INVITEs per second one source address may send, sustained; past it
    #: 503 with Retry-After, and a source that keeps on is dropped (UDP).  A
    #: trunk sends all its calls from few addresses: raise it for a busy
    #: trunk (0: no limit).
    invite_rate: float = 20.0
    #: INVITEs one source may send at once (its bucket's size).
    invite_burst: int = 40
    #: TCP and TLS connections peers may hold (those to our trunks aside),
    #: and the share of them one peer address may hold: a trunk needs a
    #: few, a phone one.
    max_connections: int = 1000
    max_connections_per_peer: float = 0.1
    #: The UDP ports calls' RTP takes (one per call), for firewalls
    #: (livekit/sip's default range).
    rtp_port_min: int = 10000
    rtp_port_max: int = 20000
    #: Seconds without RTP from the caller before the call is hung up
    #: (LiveKit's default); 0: never.
    media_timeout: float = 15.0
    #: Seconds a call may last before it is hung up; 0: no limit.
    max_call_duration: float = 3 * 3600.0
    #: The address our SDP answers name for media; empty: the SIP address
    #: (127.0.0.1 when SIP listens on every address).
    media_address: str = ""
    #: SIP over TLS, served when a certificate is given: the PEM files of
    #: the certificate chain carriers check, and of its private key (which
    #: no tenant's process can read).
    tls_cert: str = ""
    tls_key: str = ""
    tls_port: int = 5061  #: 0: any free port
    #: The CAs (a PEM file) that a TLS trunk's certificate must chain to,
    #: for a carrier with a private CA; empty: the system's.
    tls_ca_file: str = ""


class MetricsConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``/metrics`` in Prometheus' text format (README: "Observability")."""

    enabled: bool = True
    #: The bearer token a scraper must send.  Empty: only clients on the
    #: loopback may read (the metrics name tenants, rooms and agents).
    token: str = ""


class Config(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    server: ServerConfig = msgspec.field(default_factory=ServerConfig)
    metrics: MetricsConfig = msgspec.field(default_factory=MetricsConfig)
    dispatch: DispatchConfig = msgspec.field(default_factory=DispatchConfig)
    room: RoomConfig = msgspec.field(default_factory=RoomConfig)
    sip: SipConfig = msgspec.field(default_factory=SipConfig)
    logging: LoggingConfig = msgspec.field(default_factory=LoggingConfig)
    sandbox: SandboxConfig = msgspec.field(default_factory=SandboxConfig)
    rtc: RtcConfig = msgspec.field(default_factory=RtcConfig)
    webhook: WebhookConfig = msgspec.field(default_factory=WebhookConfig)
    #: Keys of the default tenant (named "").
    keys: dict[str, str] = msgspec.field(default_factory=dict)
    tenants: list[TenantConfig] = msgspec.field(default_factory=list)
    #: Agents edgedispatch runs itself (``[[agents]]``).
    agents: list[AgentDefinition] = msgspec.field(default_factory=list)
    dev: bool = False
    #: The file this was read from ("" for the embedded defaults): no
    #: tenant's process may read it (set by ``load``, whatever the file says).
    source: str = ""

    def key_tenants(self) -> dict[str, str]:
        """API key -> tenant name, for every key."""
        table = {key: "" for key in self.keys}
        for tenant in self.tenants:
            table.update({key: tenant.name for key in tenant.keys})
        return table

    def tenant(self, name: str) -> TenantConfig:
        """The tenant's settings; the default tenant ("") is the operator's."""
        for tenant in self.tenants:
            if tenant.name == name:
                return tenant
        return TenantConfig(name, self.keys if name == "" else {})

    def webhooks(self) -> dict[str, tuple[list[str], str, str]]:
        """Tenant -> (URLs, API key, secret) of each tenant with webhooks."""
        table: dict[str, tuple[list[str], str, str]] = {}
        for name, urls, keys in [("", self.webhook.urls, self.keys)] + [
            (t.name, t.webhook_urls, t.keys) for t in self.tenants
        ]:
            if urls and keys:
                key, secret = next(iter(keys.items()))
                table[name] = (list(urls), key, secret)
        return table

    def secrets(self) -> dict[str, str]:
        """API key -> secret, for every key of every tenant."""
        table = dict(self.keys)
        for tenant in self.tenants:
            table.update(tenant.keys)
        return table


def parse_keys(text: str, source: str) -> dict[str, str]:
    """``"key: secret, key2: secret2"`` → dict; raises ConfigError on a bad pair."""
    keys: dict[str, str] = {}
    for pair in text.replace("\n", ",").split(","):
        if not pair.strip():
            continue
        key, sep, secret = pair.partition(":")
        if not sep or not key.strip() or not secret.strip():
            raise ConfigError("expected 'key: secret' pairs separated by commas", key=source)
        keys[key.strip()] = secret.strip()
    return keys


def _positive(value: float, key: str, allow_zero: bool = False) -> None:
    ok = math.isfinite(value) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        raise ConfigError(f"must be a {'non-negative' if allow_zero else 'positive'} number", key)


def validate(cfg: Config) -> Config:
    s, d, r = cfg.server, cfg.dispatch, cfg.room
    if not 0 <= s.port <= 65535:
        raise ConfigError("must be a port number (0-65535)", "server.port")
    if not 0 <= cfg.sip.port <= 65535:
        raise ConfigError("must be a port number (0-65535)", "sip.port")
    if not 0 <= cfg.sip.tls_port <= 65535:
        raise ConfigError("must be a port number (0-65535)", "sip.tls_port")
    if cfg.sip.max_connections < 1:
        raise ConfigError("must be 1 or more", "sip.max_connections")
    if not 0 < cfg.sip.max_connections_per_peer <= 1:
        raise ConfigError("must be within (0, 1]", "sip.max_connections_per_peer")
    if bool(cfg.sip.tls_cert) != bool(cfg.sip.tls_key):
        raise ConfigError("tls_cert and tls_key go together", "sip.tls_cert")
    for name in ("max_calls", "max_calls_per_tenant", "invite_rate", "invite_burst"):
        _positive(getattr(cfg.sip, name), f"sip.{name}", allow_zero=True)
    sip = cfg.sip
    if not 1 <= sip.rtp_port_min <= sip.rtp_port_max <= 65535:
        raise ConfigError("must be ports with rtp_port_min <= rtp_port_max", "sip.rtp_port_min")
    if sip.media_timeout < 0 or sip.max_call_duration < 0:
        raise ConfigError("must not be negative", "sip.media_timeout")
    if s.public_url and not s.public_url.startswith(("ws://", "wss://", "http://", "https://")):
        raise ConfigError("must be a ws://, wss://, http:// or https:// URL", "server.public_url")
    if s.max_message_size < 1024:
        raise ConfigError("must be at least 1024 bytes", "server.max_message_size")
    if s.max_body_size < 1024:
        raise ConfigError("must be at least 1024 bytes", "server.max_body_size")
    for name in ("header_timeout", "body_timeout", "idle_timeout"):
        _positive(getattr(s, name), f"server.{name}")
    if s.max_connections < 0:
        raise ConfigError("must be 0 (the fd limit) or more", "server.max_connections")
    if not 0 < s.max_connections_per_peer <= 1:
        raise ConfigError("must be within (0, 1]", "server.max_connections_per_peer")
    _positive(s.drain_timeout, "server.drain_timeout", allow_zero=True)
    if s.sched_slice != 0 and not 0.0001 <= s.sched_slice <= 0.1:
        raise ConfigError("must be 0 (the kernel's) or 0.0001-0.1 seconds", "server.sched_slice")
    _positive(s.ping_interval, "server.ping_interval", allow_zero=True)
    _positive(s.ping_timeout, "server.ping_timeout")
    for name in ("queue_timeout", "offer_timeout", "retry_max"):
        _positive(getattr(d, name), f"dispatch.{name}")
    for name in ("retry_base", "reclaim_grace", "terminate_grace", "max_job_duration"):
        _positive(getattr(d, name), f"dispatch.{name}", allow_zero=True)
    if not 0 < d.load_threshold <= 1:
        raise ConfigError("must be within (0, 1]", "dispatch.load_threshold")
    if d.max_attempts < 1:
        raise ConfigError("must be at least 1", "dispatch.max_attempts")
    if not 1 <= d.worker_slots <= 1_000_000:
        raise ConfigError("must be within 1..1000000", "dispatch.worker_slots")
    for name, slots in d.agent_slots.items():
        if not 1 <= slots <= 1_000_000:
            raise ConfigError("must be within 1..1000000", f"dispatch.agent_slots.{name}")
    if r.empty_timeout < 0 or r.departure_timeout < 0:
        raise ConfigError("must be >= 0", "room.empty_timeout")
    if not 1 <= cfg.rtc.ping_interval < cfg.rtc.ping_timeout <= 3600:
        raise ConfigError(
            "ping_interval must be at least 1 s and below ping_timeout", "rtc.ping_interval"
        )
    ports = cfg.rtc.udp_ports
    if ports and not (len(ports) == 2 and 1024 <= ports[0] <= ports[1] <= 65535):
        raise ConfigError("must be [first, last] within 1024..65535", "rtc.udp_ports")
    for i, ice in enumerate(cfg.rtc.ice_servers):
        bad = [u for u in ice.urls if not u.startswith(("stun:", "stuns:", "turn:", "turns:"))]
        if not ice.urls or bad:
            raise ConfigError("needs stun:, stuns:, turn: or turns: URLs", f"rtc.ice_servers[{i}]")
    for where, urls in [("webhook.urls", cfg.webhook.urls)] + [
        (f"tenants.{t.name}.webhook_urls", t.webhook_urls) for t in cfg.tenants
    ]:
        if any(not u.startswith(("http://", "https://")) for u in urls):
            raise ConfigError("webhook URLs must be http:// or https://", where)
    if not 1 <= cfg.webhook.attempts <= 20:
        raise ConfigError("must be within 1..20", "webhook.attempts")
    _positive(cfg.webhook.timeout, "webhook.timeout")
    for tenant in cfg.tenants:
        for quota in ("max_jobs", "max_queued", "max_rooms", "max_dispatch_rate", "max_calls"):
            if getattr(tenant, quota) is not None and not getattr(tenant, quota) >= 0:
                raise ConfigError("must be 0 (no limit) or more", f"tenants.{tenant.name}.{quota}")
    if cfg.logging.level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError("must be debug, info, warning or error", "logging.level")
    if cfg.server.store_synchronous not in ("full", "normal"):
        raise ConfigError('must be "full" or "normal"', "server.store_synchronous")
    if cfg.logging.format not in ("text", "json"):
        raise ConfigError("must be 'text' or 'json'", "logging.format")
    if cfg.sandbox.mode not in ("auto", "required", "off"):
        raise ConfigError("must be 'auto', 'required' or 'off'", "sandbox.mode")
    if not 1000 <= cfg.sandbox.uid_base <= 2**31 - 2**16:
        raise ConfigError(
            "must be a uid of at least 1000 (not root's, nor a user's)", "sandbox.uid_base"
        )
    for key, secret in cfg.keys.items():
        if not key or not secret:
            raise ConfigError("API keys and secrets must not be empty", "keys")
    seen_keys, seen_names = set(cfg.keys), set()
    for i, tenant in enumerate(cfg.tenants):
        where = f"tenants[{i}]"
        if not tenant.name or tenant.name in seen_names:
            raise ConfigError("each tenant needs a unique, non-empty name", f"{where}.name")
        seen_names.add(tenant.name)
        for key, secret in tenant.keys.items():
            if not key or not secret:
                raise ConfigError("API keys and secrets must not be empty", f"{where}.keys")
            if key in seen_keys:
                raise ConfigError(f"API key {key!r} belongs to two tenants", f"{where}.keys")
            seen_keys.add(key)
        for j, module in enumerate(tenant.native_modules):
            if not all(part.isidentifier() for part in module.split(".")):
                raise ConfigError(
                    f"expected a module or package name, got {module!r}",
                    f"{where}.native_modules[{j}]",
                )
    tenant_names = {""} | seen_names
    for i, agent_def in enumerate(cfg.agents):
        if agent_def.tenant not in tenant_names:
            raise ConfigError(f"no tenant {agent_def.tenant!r}", f"agents[{i}].tenant")
        validate_agent(agent_def, f"agents[{i}]")
    check_unique(cfg.agents)
    if not seen_keys:
        raise ConfigError(
            "no API keys: set [keys] in the config file, EDGEDISPATCH_KEYS, or use --dev", "keys"
        )
    return cfg


def _decode_error(exc: msgspec.ValidationError) -> ConfigError:
    # msgspec says e.g. "Object contains unknown field `prot` - at `$.server`".
    text = str(exc)
    head, sep, tail = text.rpartition(" - at `$")
    if not sep:
        head, tail = text, ""
    key = tail.rstrip("`").lstrip(".")
    unknown = "Object contains unknown field `"
    if head.startswith(unknown):
        # The name is all between the quotes: it may hold a backquote, or
        # be empty (`"" = 1` in the file), and is then shown as "".
        field = head[len(unknown) : -1] or '""'
        key = f"{key}.{field}" if key else field
        return ConfigError("unknown setting", key)
    return ConfigError(head, key)


def load(
    path: str | Path | None = None,
    *,
    dev: bool = False,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, object] | None = None,
) -> Config:
    """Read, merge and validate the configuration.

    :param path: a TOML file, or None for the embedded defaults.
    :param dev: ``--dev``: add the dev key and bind to loopback by default.
    :param env: the environment (``os.environ`` by default).
    :param overrides: ``server`` settings from the command line (bind, port).
    """
    env = os.environ if env is None else env
    data: dict[str, object] = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read config file: {exc.strerror}", str(path)) from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"invalid TOML: {exc}", str(path)) from exc
    try:
        cfg = msgspec.convert(data, Config, strict=True)
    except msgspec.ValidationError as exc:
        raise _decode_error(exc) from exc
    keys = dict(cfg.keys)
    for var in ("LIVEKIT_KEYS", "EDGEDISPATCH_KEYS"):
        if env.get(var):
            keys.update(parse_keys(env[var], var))
    server = cfg.server
    if dev:
        keys.setdefault(DEV_KEY, DEV_SECRET)
        if "bind" not in (data.get("server") or {}):  # type: ignore[operator]
            server = msgspec.structs.replace(server, bind="127.0.0.1")
    if overrides:
        try:
            server = msgspec.convert(
                {**msgspec.structs.asdict(server), **overrides}, ServerConfig, strict=True
            )
        except msgspec.ValidationError as exc:
            raise _decode_error(exc) from exc
    source = os.path.realpath(path) if path is not None else ""
    return validate(msgspec.structs.replace(cfg, keys=keys, server=server, dev=dev, source=source))
