"""``edgedispatch doctor``: what this host and configuration give the
server, read without serving and without changing anything kept: the
parts loaded, the containment of tenant code, the store's schema, the
listeners, and the fd and memory limits.  Exit 0 if ``serve`` could start
with this configuration; 1, with the reasons, if not.

Each check returns its section's lines and what would stop ``serve``
(``problems``), or only weaken it (``warnings``).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import resource
import shutil
import sqlite3
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgedispatch import config, sched
from edgedispatch._version import __version__
from edgedispatch.errors import ConfigError

#: Below this many open files a busy server refuses connections early.
LOW_NOFILE = 4096


@dataclass
class Section:
    title: str
    lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def add_command(sub: Any) -> None:
    doctor = sub.add_parser(
        "doctor",
        help="check that this host and configuration can serve",
        description="Print what is loaded, the containment of tenant code, the data "
        "directory and its store schema, the listeners, and the fd and memory limits.  "
        "Exit 0 if serve could start; 1, with the reasons, if not.",
    )
    doctor.add_argument("--config", metavar="FILE", help="TOML configuration file")
    doctor.add_argument(
        "--dev", action="store_true", help="check the configuration `serve --dev` would use"
    )
    doctor.add_argument("--bind", metavar="HOST", help="as serve --bind")
    doctor.add_argument("--port", type=int, metavar="N", help="as serve --port")
    doctor.add_argument("--data-dir", metavar="DIR", help="as serve --data-dir")
    doctor.add_argument(
        "--allow-pure-python",
        action="store_true",
        help="as serve --allow-pure-python: the pure-Python core is no problem",
    )
    doctor.set_defaults(func=run_doctor)


def run_doctor(args: argparse.Namespace) -> int:
    overrides: dict[str, object] = {
        name: value
        for name, value in (("bind", args.bind), ("port", args.port), ("data_dir", args.data_dir))
        if value is not None
    }
    print(f"edgedispatch {__version__} doctor")
    try:
        cfg = config.load(args.config, dev=args.dev, overrides=overrides)
    except ConfigError as exc:
        print(f"\nconfiguration\n  bad: {exc}")
        print("\ncannot serve:\n  - the configuration is bad (above)")
        return 1
    sections = [
        loaded(cfg, args.allow_pure_python),
        containment(cfg),
        store(cfg),
        listeners(cfg),
        limits(cfg),
    ]
    for s in sections:
        print(f"\n{s.title}")
        for line in s.lines:
            print(f"  {line}")
    problems = [p for s in sections for p in s.problems]
    warnings = [w for s in sections for w in s.warnings]
    if warnings:
        print("\nwarnings:")
        print("\n".join(f"  - {w}" for w in warnings))
    if problems:
        print("\ncannot serve:")
        print("\n".join(f"  - {p}" for p in problems))
        return 1
    print("\nready to serve")
    return 0


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return ""


def loaded(cfg: config.Config, allow_pure: bool) -> Section:
    from edgedispatch import _core
    from edgedispatch.net import media_link

    s = Section("loaded")
    if _core.COMPILED:
        s.lines.append("core: compiled (Cython)")
    else:
        why = "not built" if not _core.BUILT else "EDGEDISPATCH_NO_EXTENSIONS is set"
        s.lines.append(f"core: pure Python ({why})")
        if not (cfg.dev or allow_pure):
            s.problems.append(
                f"the compiled core is not loaded ({why}); serve needs --allow-pure-python"
            )
    uvloop = _version("uvloop")
    s.lines.append(
        f"event loop: uvloop {uvloop} (serve's default; --loop asyncio also works)"
        if uvloop
        else "event loop: asyncio only (uvloop is not installed)"
    )
    if not uvloop:
        s.problems.append("uvloop is not installed: serve needs --loop asyncio")
    aiortc, av = _version("aiortc"), _version("av")
    s.lines.append(f"aiortc: {aiortc or 'not installed'}; PyAV: {av or 'not installed'}")
    if cfg.rtc.enabled and media_link.aiortc_problem():
        s.warnings.append(
            f"rooms are off: {media_link.aiortc_problem()} (pip install edgedispatch[rtc])"
        )
    sdk = _version("livekit")
    s.lines.append(
        f"livekit rtc SDK: {sdk}"
        if sdk
        else "livekit rtc SDK: not installed (native agents "
        "that join their rooms need edgedispatch[agents])"
    )
    sipp = shutil.which("sipp")
    s.lines.append(f"sipp (tests, bench sip): {sipp or 'not on PATH'}")
    s.lines.append(f"python: {sys.version.split()[0]} at {sys.executable}")
    return s


def containment(cfg: config.Config) -> Section:
    """The start-up probe the server runs (``Containment``), then undone."""
    from edgedispatch.runtime.contain import Containment

    s = Section(f"containment (sandbox.mode {cfg.sandbox.mode})")
    try:
        probe = Containment(cfg)
    except ConfigError as exc:
        s.lines.append(f"refused: {exc}")
        s.problems.append(str(exc))
        return s
    try:
        s.lines.extend(probe.describe())
        s.warnings.extend(f"containment: missing {m}" for m in probe.missing())
    finally:
        probe.close()
    return s


def schema_version(path: Path) -> int:
    """The store file's ``PRAGMA user_version``, read only (never migrated)."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return int(db.execute("PRAGMA user_version").fetchone()[0])
    finally:
        db.close()


def store(cfg: config.Config) -> Section:
    from edgedispatch.store.sqlite import FILENAME, SCHEMA_VERSION

    s = Section("store")
    data_dir = cfg.server.data_dir or os.environ.get("STATE_DIRECTORY", "")
    if not data_dir:
        s.lines.append("data directory: none (state is kept in memory: lost on restart)")
        return s
    s.lines.append(f"data directory: {data_dir}")
    path = Path(data_dir) / FILENAME
    if not path.exists():
        s.lines.append(f"store: none yet (made at start, schema {SCHEMA_VERSION})")
        parent = Path(data_dir)
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not os.access(parent, os.W_OK | os.X_OK):
            s.problems.append(f"{parent} is not writable: the store cannot be made")
        return s
    try:
        found = schema_version(path)
    except sqlite3.Error as exc:
        s.lines.append(f"store: {path}: unreadable ({exc})")
        s.problems.append(f"the store {path} cannot be read: {exc}")
        return s
    if found > SCHEMA_VERSION:
        s.lines.append(f"store: {path}, schema {found}: newer than this build's {SCHEMA_VERSION}")
        s.problems.append(
            f"the store's schema {found} is from a newer edgedispatch (this one knows up to "
            f"{SCHEMA_VERSION}): upgrade, or restore a backup"
        )
    elif found < SCHEMA_VERSION:
        s.lines.append(
            f"store: {path}, schema {found}: migrated to {SCHEMA_VERSION} at the next start"
        )
    else:
        s.lines.append(f"store: {path}, schema {found} (current)")
    if not os.access(data_dir, os.W_OK):
        s.problems.append(f"{data_dir} is not writable")
    return s


def listeners(cfg: config.Config) -> Section:
    from edgedispatch.net import sip_tls, systemd

    s = Section("listeners")
    server = cfg.server
    inherited = systemd.inherited_sockets()
    if inherited.http is not None:
        s.lines.append("http: the socket systemd passed (LISTEN_FDS)")
    else:
        s.lines.append(f"http: {server.bind}:{server.port} (Twirp, /agent, /rtc, /metrics)")
    if cfg.sip.enabled:
        bind = cfg.sip.bind or server.bind
        s.lines.append(f"sip: udp and tcp {bind}:{cfg.sip.port}")
        if cfg.sip.tls_cert:
            s.lines.append(f"sip: tls {bind}:{cfg.sip.tls_port} (certificate {cfg.sip.tls_cert})")
        try:  # what serve would load: the certificate and key, the CAs trusted
            if cfg.sip.tls_cert:
                sip_tls.server_context(cfg.sip)
            sip_tls.client_context(cfg.sip)
        except ConfigError as exc:
            s.problems.append(exc.msg)
    else:
        s.lines.append("sip: off (sip.enabled)")
    if cfg.rtc.enabled:
        ports = cfg.rtc.udp_ports
        span = f"udp {ports[0]}-{ports[1]}" if ports else "udp, any free port"
        s.lines.append(f"rtc media: {span}, one per participant connection")
    else:
        s.lines.append("rtc: off (rtc.enabled)")
    return s


def _cgroup_memory() -> str:
    """This process's cgroup memory limit, as the kernel states it, or ""."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return ""
    root = Path("/sys/fs/cgroup")
    for line in lines:
        _, names, path = line.split(":", 2)
        candidates = []
        if names == "":
            candidates.append(root / path.lstrip("/") / "memory.max")
        elif "memory" in names.split(","):
            candidates.append(root / "memory" / path.lstrip("/") / "memory.limit_in_bytes")
        for f in candidates:
            try:
                value = f.read_text().strip()
            except OSError:
                continue
            if value == "max" or (value.isdigit() and int(value) >= 2**62):
                continue
            return f"{int(value) / 2**20:.0f} MiB ({f})" if value.isdigit() else value
    return ""


def _limit(value: int) -> str:
    return "unlimited" if value == resource.RLIM_INFINITY else str(value)


def limits(cfg: config.Config) -> Section:
    s = Section("limits")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    s.lines.append(f"open files (RLIMIT_NOFILE): {_limit(soft)} (hard {_limit(hard)})")
    if soft != resource.RLIM_INFINITY and soft < LOW_NOFILE:
        s.warnings.append(
            f"open files limited to {soft}: connections beyond it are refused "
            f"(raise LimitNOFILE= or ulimit -n to {LOW_NOFILE} or more)"
        )
    memory = _cgroup_memory()
    s.lines.append(f"memory (cgroup): {memory or 'no limit'}")
    as_soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    s.lines.append(f"address space (RLIMIT_AS): {_limit(as_soft)}")
    wanted = cfg.server.sched_slice
    if wanted <= 0:
        s.lines.append("scheduler slices: the kernel's default (server.sched_slice = 0)")
    elif sched.supported():
        s.lines.append(f"scheduler slices: {wanted * 1000:g} ms for the event loop and helpers")
    else:
        s.lines.append("scheduler slices: the kernel's default (custom slices need Linux 6.12)")
    return s
