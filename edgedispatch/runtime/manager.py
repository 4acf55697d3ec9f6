"""The agents edgedispatch runs itself: definitions from the config file and
from the API, each turned into a local worker (native, command) or an
on-demand agent-server supervisor."""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any

import msgspec

from edgedispatch.config import Config
from edgedispatch.config.agents import AgentDefinition, authorize, check_unique, validate
from edgedispatch.dispatch.domain import Domain
from edgedispatch.dispatch.events import DomainEvent, JobWaiting, WorkerLost, WorkerRegistered
from edgedispatch.dispatch.records import job_fields
from edgedispatch.errors import (
    AlreadyExists,
    ConfigError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from edgedispatch.runtime.command import CommandRunner
from edgedispatch.runtime.contain import Containment
from edgedispatch.runtime.native import NativePool
from edgedispatch.runtime.supervisor import START_TIMEOUT, AgentServerSupervisor, KeyRing
from edgedispatch.store import Store
from edgedispatch.worker.local import LocalWorker
from edgedispatch.worker.runner import JobRunner

log = logging.getLogger("edgedispatch.agents")

NAMESPACE = "agents"
#: The definitions stopped with ``agent stop``: they stay stopped across a restart.
STOPPED = "agents-stopped"
#: The longest ``agent start`` may be asked to wait.
MAX_START_TIMEOUT = 600.0


class _Active:
    def __init__(self, definition: AgentDefinition, from_config: bool) -> None:
        self.definition = definition
        self.from_config = from_config
        self.pool: NativePool | None = None
        self.command: CommandRunner | None = None
        self.worker: LocalWorker | None = None
        self.supervisor: AgentServerSupervisor | None = None
        self.stopped = False


#: (tenant, agent name, kind, processes, memory bytes, running jobs) of each
#: local agent (``AgentManager.metric_rows``).
MetricRows = list[tuple[str, str, str, int, int, int]]
Items = list[dict[str, Any]]


class AgentManager:
    """:param url: this server's WebSocket URL, for agents it starts.
    :param keys: where the agent servers' own API keys are made known
        (the token verifier).
    :param containment: how every local process is started (its sandbox,
        its cell, its environment)."""

    def __init__(
        self,
        domain: Domain,
        cfg: Config,
        url: str,
        store: Store,
        keys: KeyRing,
        containment: Containment,
    ) -> None:
        self._d = domain
        self._cfg = cfg
        self._contain = containment
        self._url = url
        self._store = store
        self._keys = keys
        self._agents: dict[tuple[str, str], _Active] = {}
        self._loop = asyncio.get_running_loop()
        domain.subscribe(self._on_job_waiting, JobWaiting)
        domain.subscribe(self._on_worker, WorkerRegistered, WorkerLost)

    def _key_for(self, tenant: str) -> tuple[str, str]:
        cfg = self._cfg
        keys = (
            cfg.keys
            if tenant == ""
            else next((t.keys for t in cfg.tenants if t.name == tenant), {})
        )
        if not keys:
            raise ConfigError(f"tenant {tenant!r} has no API key to run agents with", "tenant")
        key = next(iter(keys))
        return key, keys[key]

    async def start(self, configured: list[AgentDefinition]) -> None:
        """Activate the config file's definitions, then the stored ones."""
        check_unique(configured)
        for i, d in enumerate(configured):
            validate(d, f"agents[{i}]")
            await self._activate(d, from_config=True)
        for raw in self._store.load(NAMESPACE).values():
            d = msgspec.convert(raw, AgentDefinition)
            if (d.tenant, d.name) in self._agents:
                continue  # the config file wins
            try:
                # The operator may have taken a permission back since.
                self._authorize(d)
                await self._activate(validate(d), from_config=False)
            except (ConfigError, PermissionDenied) as exc:
                log.error(
                    "stored agent definition not started: %s",
                    exc,
                    extra={"agent": d.name, "tenant": d.tenant},
                )

    async def _activate(self, d: AgentDefinition, from_config: bool) -> None:
        active = _Active(d, from_config)
        active.stopped = bool(self._store.load(STOPPED).get(f"{d.tenant}/{d.name}"))
        if d.kind == "server":
            spawn = functools.partial(
                self._contain.spawn,
                tenant=d.tenant,
                name=f"server-{d.name}",
                memory_mb=d.memory_limit_mb,
                max_procs=d.max_processes,
                read_only=d.bound()[0],
                read_write=d.bound()[1],
            )
            active.supervisor = AgentServerSupervisor(
                d,
                self._url,
                self._keys,
                lambda: self._d.agent_jobs(d.tenant, d.name),
                enabled=not active.stopped,
                spawn=spawn,
            )
        else:
            api_key, secret = self._key_for(d.tenant)
            runner: JobRunner
            if d.kind == "native":
                active.pool = NativePool(
                    d.name,
                    d.entrypoint,
                    d.prewarm or None,
                    idle=d.idle,
                    env=d.env,
                    memory_limit_mb=d.memory_limit_mb,
                    on_output=self._output(d),
                    containment=self._contain,
                    tenant=d.tenant,
                    max_procs=d.max_processes,
                    binds=d.bound(),
                    module_paths=d.module_paths(),
                )
                await active.pool.start()
                runner = active.pool
            else:
                active.command = CommandRunner(d, self._output(d), self._contain)
                runner = active.command
            active.worker = LocalWorker(self._d, d, runner, api_key, secret, self._url)
            if not active.stopped:
                active.worker.register(self._loop.time())
        self._agents[d.tenant, d.name] = active
        log.info(
            "agent %s ready (%s%s)",
            d.name,
            d.kind,
            ", stopped" if active.stopped else "",
            extra={"tenant": d.tenant, "agent": d.name},
        )

    def _output(self, d: AgentDefinition) -> Any:
        def on_output(job_id: str, line: str) -> None:
            rec = self._d.jobs.get(job_id)
            extra = job_fields(rec) if rec is not None else {"job": job_id}
            extra.update(agent=d.name, tenant=d.tenant)
            log.info("%s", line, extra=extra)

        return on_output

    def _on_job_waiting(self, event: DomainEvent) -> None:
        # No worker of its agent is connected, or none has room: an agent
        # server of that agent, if one is defined, is wanted.
        if not isinstance(event, JobWaiting):
            return
        key = event.job.key
        active = self._agents.get((key.tenant, key.agent_name))
        if active is not None and active.supervisor is not None:
            active.supervisor.demand()

    def _on_worker(self, event: DomainEvent) -> None:
        # A worker registered or went: if with an agent server's own key,
        # that instance is up (or no longer).
        if not isinstance(event, WorkerRegistered | WorkerLost):
            return
        for active in self._agents.values():
            sup = active.supervisor
            if sup is not None and sup.owns(event.api_key):
                if isinstance(event, WorkerRegistered):
                    sup.worker_registered(event.api_key, event.worker_id, event.key.agent_name)
                else:
                    sup.worker_lost(event.api_key, event.worker_id)
                return

    # ------------------------------------------------------------------
    # The API's operations (all scoped to one tenant).

    def list(self, tenant: str) -> list[dict[str, Any]]:
        out = []
        for (t, _), a in sorted(self._agents.items()):
            if t != tenant:
                continue
            item: dict[str, Any] = msgspec.to_builtins(a.definition)
            item["kind"] = a.definition.kind
            item["source"] = "config" if a.from_config else "api"
            item["state"] = "stopped" if a.stopped else "running"
            if a.supervisor is not None:
                item["state"] = a.supervisor.summary()
                item["instances"] = a.supervisor.status()
            if a.worker is not None:
                item["running_jobs"] = len(a.worker.running)
            if a.pool is not None:
                item["ready_processes"] = a.pool.ready()
                item["pool_uss_kb"] = a.pool.unique_memory_kb()
            out.append(item)
        return out

    def list_scoped(self, tenant: str | None) -> Items:
        """``list`` of one tenant, or of every tenant (None), for the status
        page; each item names its tenant."""
        tenants = sorted({t for t, _ in self._agents}) if tenant is None else [tenant]
        return [{**item, "tenant": t} for t in tenants for item in self.list(t)]

    def metric_rows(self) -> MetricRows:
        """Each local agent's (tenant, name, kind, processes, unique memory in
        bytes of its pool's processes, running jobs), for /metrics."""
        rows: MetricRows = []
        for (tenant, name), a in sorted(self._agents.items()):
            processes, memory_kb = 0, 0
            if a.pool is not None:
                uss = a.pool.unique_memory_kb()
                processes, memory_kb = len(uss), sum(uss)
            if a.supervisor is not None:
                processes += sum(1 for i in a.supervisor.status() if i.get("pid"))
            running = len(a.worker.running) if a.worker is not None else 0
            kind = a.definition.kind
            rows.append((tenant, name, kind, processes, memory_kb * 1024, running))
        return rows

    async def add(self, tenant: str, raw: dict[str, Any]) -> dict[str, Any]:
        if raw.get("tenant", tenant) != tenant:
            raise PermissionDenied("a definition can only be added to the token's own tenant")
        if raw.get("binds") and tenant != "":
            # A bind shows a tenant's processes a path of the host's.
            raise PermissionDenied("binds need the operator's key (the keys under [keys])")
        try:
            d = msgspec.convert({**raw, "tenant": tenant}, AgentDefinition)
        except msgspec.ValidationError as exc:
            raise ConfigError(str(exc), "agent") from exc
        self._authorize(d)
        validate(d)
        if (tenant, d.name) in self._agents:
            raise AlreadyExists(f"agent {d.name!r} already exists in this tenant")
        await self._activate(d, from_config=False)
        self._store.put(NAMESPACE, f"{tenant}/{d.name}", msgspec.to_builtins(d))
        return next(a for a in self.list(tenant) if a["name"] == d.name)

    def _authorize(self, d: AgentDefinition) -> None:
        """Whether ``d``'s tenant may add it (the operator: the default tenant)."""
        grants = self._cfg.tenant(d.tenant)
        authorize(
            d,
            operator=d.tenant == "",
            allow_code=grants.allow_code,
            native_modules=grants.native_modules,
        )

    def _get(self, tenant: str, name: str) -> _Active:
        active = self._agents.get((tenant, name))
        if active is None:
            raise NotFound(f"no agent {name!r} in this tenant")
        return active

    async def remove(self, tenant: str, name: str) -> None:
        active = self._get(tenant, name)
        if active.from_config:
            raise ConfigError(f"agent {name!r} comes from the config file; remove it there")
        await self._deactivate(active)
        del self._agents[tenant, name]
        self._store.delete(NAMESPACE, f"{tenant}/{name}")
        self._store.delete(STOPPED, f"{tenant}/{name}")

    def _item(self, tenant: str, name: str) -> dict[str, Any]:
        return next(a for a in self.list(tenant) if a["name"] == name)

    def _set_stopped(self, active: _Active, stopped: bool) -> None:
        active.stopped = stopped
        d = active.definition
        if stopped:
            self._store.put(STOPPED, f"{d.tenant}/{d.name}", True)
        else:
            self._store.delete(STOPPED, f"{d.tenant}/{d.name}")

    async def start_agent(
        self, tenant: str, name: str, timeout: float = START_TIMEOUT
    ) -> dict[str, Any]:
        """Take jobs again.  An agent server is also brought up: this
        returns once ``max(1, min_instances)`` of its instances have
        registered, and raises ``Unavailable`` with the reason if they do
        not (an instance crashed, or ``timeout`` passed)."""
        active = self._get(tenant, name)
        if not 0 < timeout <= MAX_START_TIMEOUT:
            raise InvalidArgument(f"timeout must be within (0, {MAX_START_TIMEOUT:g}] seconds")
        self._set_stopped(active, False)
        if active.supervisor is not None:
            error = await active.supervisor.start(timeout)
            if error:
                raise Unavailable(f"agent {name!r} did not start: {error}")
        elif active.worker is not None and not active.worker.worker_id:
            active.worker.register(self._loop.time())
        return self._item(tenant, name)

    async def stop_agent(self, tenant: str, name: str) -> dict[str, Any]:
        """Take no more jobs: running native and command jobs are killed,
        every agent-server instance is stopped (this returns once they
        exited).  It stays so, across restarts, until ``start_agent``."""
        active = self._get(tenant, name)
        self._set_stopped(active, True)
        if active.supervisor is not None:
            await active.supervisor.stop()
        elif active.worker is not None:
            active.worker.close(self._loop.time())
        return self._item(tenant, name)

    async def _deactivate(self, active: _Active) -> None:
        if active.worker is not None:
            active.worker.close(self._loop.time())
        if active.supervisor is not None:
            await active.supervisor.close()
        if active.pool is not None:
            await active.pool.close()
        if active.command is not None:
            await active.command.close()

    def on_demand(self, tenant: str, name: str) -> bool:
        """Whether a job of this agent would start an agent server of it
        (defined, and not stopped with ``agent stop``), even with no
        instance running now."""
        active = self._agents.get((tenant, name))
        return active is not None and active.supervisor is not None and active.supervisor.enabled

    def running_jobs(self) -> int:
        return sum(len(a.worker.running) for a in self._agents.values() if a.worker)

    async def close(self) -> None:
        for active in self._agents.values():
            await self._deactivate(active)
        self._agents.clear()
