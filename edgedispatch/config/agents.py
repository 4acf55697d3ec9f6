"""Agent definitions: what edgedispatch runs itself.

Three kinds, by which field is set:
  * native (``entrypoint = "pkg.module:function"``, optional ``prewarm``):
    each job runs in a process from edgedispatch's warm pool;
  * command (``command = [...]``): any program, started once per job;
  * agent server (``worker = [...]``): a LiveKit agent server (for example a
    livekit-agents app run as ``python agent.py start``) that edgedispatch
    starts when a job waits for it, restarts when it crashes, and stops
    when it has been idle.
"""

from __future__ import annotations

import contextlib
import importlib.machinery
import importlib.util
import math
import os
import shutil
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from typing import Literal

import msgspec

from edgedispatch.errors import ConfigError, PermissionDenied

Kind = Literal["native", "command", "server"]


class AgentDefinition(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    name: str
    tenant: str = ""
    entrypoint: str = ""  #: native: "pkg.module:function"
    prewarm: str = ""  #: native: "pkg.module:function", run once per pool process
    command: list[str] = msgspec.field(default_factory=list)  #: one process per job
    worker: list[str] = msgspec.field(default_factory=list)  #: an agent server
    env: dict[str, str] = msgspec.field(default_factory=dict)
    cwd: str = ""
    #: Paths its processes see besides the system, Python and ``cwd``:
    #: "/srv/models" (read-only) or "/var/recordings:rw".  The operator's to
    #: give: a tenant's own directory is always there (its HOME).
    binds: list[str] = msgspec.field(default_factory=list)
    #: native and command: jobs at once (the slot cap of its local worker)
    slots: int = 8
    #: native: warm pool processes kept ready
    idle: int = 2
    #: per job, or per agent-server instance, for the whole process tree; 0 = none
    memory_limit_mb: float = 0
    max_duration: float = 0  #: seconds per job; 0 = none
    #: processes and threads per job or instance, for the whole tree: a fork
    #: bomb stops here (livekit-agents runs ~40 threads per instance)
    max_processes: int = 512
    #: agent server: instances kept running / at most / idle seconds before stopping
    min_instances: int = 0
    max_instances: int = 1
    idle_timeout: float = 300

    def module_paths(self) -> list[str]:
        """Where the entrypoint's and prewarm's modules are (the sys.path
        entries that hold them), as the server finds them."""
        extra = [p for p in (self.env.get("PYTHONPATH", "").split(os.pathsep) + [self.cwd]) if p]
        found = []
        for ref in (self.entrypoint, self.prewarm):
            path = locate_module(ref.partition(":")[0], extra) if ref else None
            if path is not None and path not in found:
                found.append(path)
        return found

    def bound(self) -> tuple[list[str], list[str]]:
        """``binds`` as (read-only paths, read-write paths)."""
        ro: list[str] = []
        rw: list[str] = []
        for bind in self.binds:
            if bind.endswith(":rw"):
                rw.append(bind[:-3])
            else:
                ro.append(bind.removesuffix(":ro"))
        return ro, rw

    @property
    def kind(self) -> Kind:
        if self.entrypoint:
            return "native"
        if self.command:
            return "command"
        return "server"


def locate_module(module: str, extra_path: list[str]) -> str | None:
    """The directory that holds ``module`` (its top-level package or
    module), searched in ``extra_path`` and then as this Python would, or
    None.  Found without importing anything: importing a package runs its
    code, and a tenant's code never runs in the server
    (``importlib.util.find_spec`` imports a dotted name's parents)."""
    top, *rest = module.split(".")
    tops: list[tuple[ModuleSpec | None, str]] = []
    for entry in extra_path:
        with contextlib.suppress(ImportError, ValueError, OSError):
            tops.append((importlib.machinery.PathFinder.find_spec(top, [entry]), entry))
    # Then as an import would, sys.meta_path's finders included (an
    # editable install's); a top-level name's spec imports nothing.
    with contextlib.suppress(ImportError, ValueError):
        tops.append((importlib.util.find_spec(top), ""))
    for spec, entry in tops:
        if spec is None:
            continue
        where = entry or _holder(spec)
        name = top
        for part in rest:
            locations = spec.submodule_search_locations if spec is not None else None
            if not locations:
                spec = None
                break
            name = f"{name}.{part}"
            spec = importlib.machinery.PathFinder.find_spec(name, list(locations))
        if spec is not None and where:
            return where
    return None


def _holder(spec: ModuleSpec) -> str:
    """The directory a top-level module or package lives in."""
    if spec.submodule_search_locations:
        return os.path.dirname(os.path.abspath(next(iter(spec.submodule_search_locations))))
    if spec.origin and os.path.isabs(spec.origin):
        return os.path.dirname(spec.origin)
    return ""  # built in, or frozen: nothing to show a sandbox


def _program_exists(program: str, cwd: str) -> bool:
    if os.sep in program:
        path = program if os.path.isabs(program) else os.path.join(cwd or ".", program)
        return os.path.isfile(path) and os.access(path, os.X_OK)
    return shutil.which(program) is not None


MAX_NAME = 128  # bytes


def validate(d: AgentDefinition, where: str = "agent") -> AgentDefinition:
    """Raise ConfigError, naming the field and the reason, for a bad definition."""
    if not d.name:
        raise ConfigError("an agent needs a name", f"{where}.name")
    if len(d.name.encode()) > MAX_NAME or any(ord(c) < 32 or ord(c) == 127 for c in d.name):
        raise ConfigError(f"at most {MAX_NAME} bytes, without control characters", f"{where}.name")
    kinds = [k for k in (d.entrypoint, d.command, d.worker) if k]
    if len(kinds) != 1:
        raise ConfigError("set exactly one of entrypoint, command or worker", where)
    extra_path = [p for p in (d.env.get("PYTHONPATH", "").split(os.pathsep) + [d.cwd]) if p]
    for field in ("entrypoint", "prewarm"):
        ref: str = getattr(d, field)
        if not ref:
            continue
        module, sep, func = ref.partition(":")
        if not sep or not module or not func.isidentifier():
            raise ConfigError(f"expected 'pkg.module:function', got {ref!r}", f"{where}.{field}")
        if locate_module(module, extra_path) is None:
            raise ConfigError(f"unknown module {module!r}", f"{where}.{field}")
    for field in ("command", "worker"):
        argv: list[str] = getattr(d, field)
        if argv and not _program_exists(argv[0], d.cwd):
            raise ConfigError(f"missing command {argv[0]!r}", f"{where}.{field}")
    if not 1 <= d.slots <= 10_000:
        raise ConfigError("must be within 1..10000", f"{where}.slots")
    if not 0 <= d.idle <= 1_000:
        raise ConfigError("must be within 0..1000", f"{where}.idle")
    if not 16 <= d.max_processes <= 65_536:
        raise ConfigError("must be within 16..65536", f"{where}.max_processes")
    for i, bind in enumerate(d.binds):
        path, _, mode = bind.rpartition(":") if bind.endswith((":ro", ":rw")) else (bind, "", "")
        if not os.path.isabs(path) or not os.path.exists(path):
            raise ConfigError(f"no such absolute path {path!r}", f"{where}.binds[{i}]")
    for field in ("memory_limit_mb", "max_duration", "idle_timeout"):
        value: float = getattr(d, field)
        if not 0 <= value < math.inf:  # (NaN fails too)
            raise ConfigError("must be a number >= 0", f"{where}.{field}")
    if not 0 <= d.min_instances <= d.max_instances or d.max_instances < 1:
        raise ConfigError("need 0 <= min_instances <= max_instances, max_instances >= 1", where)
    return d


def check_unique(defs: list[AgentDefinition]) -> None:
    seen: set[tuple[str, str]] = set()
    for i, d in enumerate(defs):
        if (d.tenant, d.name) in seen:
            raise ConfigError(
                f"duplicate agent name {d.name!r} in tenant {d.tenant or '(default)'!r}",
                f"agents[{i}].name",
            )
        seen.add((d.tenant, d.name))


# -- who may add what ------------------------------------------------------------

#: Environment variables that change which code a Python process loads (or
#: any process: the dynamic linker's).  Setting them is running code of
#: one's own, so it needs the right to.
_CODE_VARS = ("PYTHON", "LD_")
_CODE_VAR_NAMES = frozenset({"PATH", "HOME"})  # programs found by name; the user site

_KIND_WORDS = {"command": "a command agent", "server": "an agent server (worker)"}


def _approved(module: str, approved: Sequence[str]) -> bool:
    return any(module == a or module.startswith(a + ".") for a in approved)


def authorize(
    d: AgentDefinition, *, operator: bool, allow_code: bool, native_modules: Sequence[str]
) -> None:
    """Raise ``PermissionDenied``, naming the permission missing, unless the
    caller may add ``d`` through the API.

    The operator (a key of the default tenant, under ``[keys]``) may add
    anything, and so may a tenant with ``allow_code``.  Any other tenant may
    add native agents whose entrypoint and prewarm come from its
    ``native_modules``, and nothing that would choose other code: no
    ``cwd``, no variables of ``_CODE_VARS`` (PYTHONPATH, LD_PRELOAD...).
    """
    if operator or allow_code:
        return
    tenant = repr(d.tenant)
    if d.kind != "native":
        raise PermissionDenied(
            f"adding {_KIND_WORDS[d.kind]} needs the operator's key or allow_code "
            f"for tenant {tenant}"
        )
    for ref in (d.entrypoint, d.prewarm):
        module = ref.partition(":")[0]
        if ref and not _approved(module, native_modules):
            raise PermissionDenied(
                f"adding a native agent from module {module!r} needs the operator's key, "
                f"allow_code, or the module in native_modules for tenant {tenant}"
            )
    if d.cwd:
        raise PermissionDenied(
            f"setting cwd needs the operator's key or allow_code for tenant {tenant}"
        )
    for name in sorted(d.env):
        if name.startswith(_CODE_VARS) or name in _CODE_VAR_NAMES:
            raise PermissionDenied(
                f"setting {name} needs the operator's key or allow_code for tenant {tenant}"
            )
