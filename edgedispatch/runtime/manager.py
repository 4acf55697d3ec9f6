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
from edgedispatch.config.agents import AgentDefinition, check_unique, validate
from edgedispatch.dispatch.domain import Domain
from edgedispatch.dispatch.events import DomainEvent, JobWaiting
from edgedispatch.errors import AlreadyExists, ConfigError, NotFound, PermissionDenied
from edgedispatch.runtime.command import CommandRunner
from edgedispatch.runtime.contain import Containment
from edgedispatch.runtime.native import NativePool
from edgedispatch.runtime.supervisor import AgentServerSupervisor
from edgedispatch.store import Store
from edgedispatch.worker.local import LocalWorker
from edgedispatch.worker.runner import JobRunner

log = logging.getLogger("edgedispatch.agents")

NAMESPACE = "agents"


class _Active:
    def __init__(self, definition: AgentDefinition, from_config: bool) -> None:
        self.definition = definition
        self.from_config = from_config
        self.pool: NativePool | None = None
        self.command: CommandRunner | None = None
        self.worker: LocalWorker | None = None
        self.supervisor: AgentServerSupervisor | None = None
        self.stopped = False


class AgentManager:
    """:param url: this server's WebSocket URL, for agents it starts."""

    def __init__(
        self, domain: Domain, cfg: Config, url: str, store: Store, containment: Containment
    ) -> None:
        self._d = domain
        self._cfg = cfg
        self._contain = containment
        self._url = url
        self._store = store
        self._agents: dict[tuple[str, str], _Active] = {}
        self._loop = asyncio.get_running_loop()
        domain.subscribe(self._on_job_waiting, JobWaiting)

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
                await self._activate(validate(d), from_config=False)
            except ConfigError as exc:
                log.error(
                    "stored agent definition is invalid: %s",
                    exc,
                    extra={"agent": d.name, "tenant": d.tenant},
                )

    async def _activate(self, d: AgentDefinition, from_config: bool) -> None:
        api_key, secret = self._key_for(d.tenant)
        active = _Active(d, from_config)
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
                api_key,
                secret,
                lambda: self._busy(d),
                lambda: self._waiting(d),
                spawn=spawn,
            )
        else:
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
                )
                await active.pool.start()
                runner = active.pool
            else:
                active.command = CommandRunner(d, self._output(d), self._contain)
                runner = active.command
            active.worker = LocalWorker(self._d, d, runner, api_key, secret, self._url)
            active.worker.register(self._loop.time())
        self._agents[d.tenant, d.name] = active
        log.info("agent %s ready (%s)", d.name, d.kind, extra={"tenant": d.tenant})

    def _output(self, d: AgentDefinition) -> Any:
        def on_output(job_id: str, line: str) -> None:
            log.info("%s", line, extra={"job": job_id, "agent": d.name, "tenant": d.tenant})

        return on_output

    def _busy(self, d: AgentDefinition) -> int:
        return self._d.agent_jobs(d.tenant, d.name)[0]

    def _waiting(self, d: AgentDefinition) -> tuple[int, int]:
        """(jobs of ``d`` queued, workers of ``d`` connected if any are)."""
        queued = self._d.agent_jobs(d.tenant, d.name)[1]
        if not queued:
            return 0, 0
        return queued, self._d.workers.connected(d.tenant, d.name)

    def _on_job_waiting(self, event: DomainEvent) -> None:
        # No worker of its agent is connected, or none has room: an agent
        # server of that agent, if one is defined, is wanted.
        if not isinstance(event, JobWaiting):
            return
        key = event.job.key
        active = self._agents.get((key.tenant, key.agent_name))
        if active is not None and active.supervisor is not None and not active.stopped:
            active.supervisor.demand(self._waiting(active.definition)[1])

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
                item["instances"] = len(a.supervisor.instances)
            if a.worker is not None:
                item["running_jobs"] = len(a.worker.running)
            if a.pool is not None:
                item["ready_processes"] = a.pool.ready()
                item["pool_uss_kb"] = a.pool.unique_memory_kb()
            out.append(item)
        return out

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
        validate(d)
        if (tenant, d.name) in self._agents:
            raise AlreadyExists(f"agent {d.name!r} already exists in this tenant")
        await self._activate(d, from_config=False)
        self._store.put(NAMESPACE, f"{tenant}/{d.name}", msgspec.to_builtins(d))
        return next(a for a in self.list(tenant) if a["name"] == d.name)

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

    async def set_running(self, tenant: str, name: str, running: bool) -> None:
        """stop: take no more jobs (an agent server is stopped); start: again."""
        active = self._get(tenant, name)
        if running == (not active.stopped):
            return
        active.stopped = not running
        if active.supervisor is not None:
            if running:
                active.supervisor.demand(0)
            else:
                active.supervisor.stop()
        elif active.worker is not None:
            if running:
                active.worker.register(self._loop.time())
            else:
                active.worker.close(self._loop.time())

    async def _deactivate(self, active: _Active) -> None:
        if active.worker is not None:
            active.worker.close(self._loop.time())
        if active.supervisor is not None:
            await active.supervisor.close()
        if active.pool is not None:
            await active.pool.close()
        if active.command is not None:
            await active.command.close()

    def running_jobs(self) -> int:
        return sum(len(a.worker.running) for a in self._agents.values() if a.worker)

    async def close(self) -> None:
        for active in self._agents.values():
            await self._deactivate(active)
        self._agents.clear()
