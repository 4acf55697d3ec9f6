"""The asyncio shell of an agent server's supervision: what it does with the
policy's decisions (spawn, signal, answer, one timer), with a fake spawner
(no processes) and, for an instant exit, with a real one.

The decisions themselves are tests/unit/test_supervisor_policy.py's."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import Any

import pytest

from edgedispatch.config.agents import AgentDefinition
from edgedispatch.runtime import supervisor_policy
from edgedispatch.runtime.supervisor import AgentServerSupervisor


class Keys:
    """A KeyRing that remembers."""

    def __init__(self) -> None:
        self.keys: dict[str, tuple[str, str]] = {}
        self.removed: list[str] = []

    def add_key(self, api_key: str, secret: str, tenant: str) -> None:
        self.keys[api_key] = (secret, tenant)

    def remove_key(self, api_key: str) -> None:
        del self.keys[api_key]
        self.removed.append(api_key)


class FakeProcess:
    pids = itertools.count(1000)

    def __init__(self, env: dict[str, str], on_exit: Callable[[int], None]) -> None:
        self.pid = next(self.pids)
        self.env = env
        self.returncode: int | None = None
        self._on_exit = on_exit
        self.signals: list[str] = []

    @property
    def running(self) -> bool:
        return self.returncode is None

    def exit(self, code: int) -> None:
        if self.returncode is None:
            self.returncode = code
            self._on_exit(code)

    def terminate(self, grace: float) -> None:
        self.signals.append("TERM")
        asyncio.get_running_loop().call_soon(self.exit, -15)

    def kill(self) -> None:
        self.signals.append("KILL")
        self.exit(-9)


class FakeSpawner:
    """``spawn=``: makes FakeProcesses; ``exit_at_once`` makes each exit
    with that code before the spawn returns (as ``false`` can)."""

    def __init__(self, exit_at_once: int | None = None, fail: bool = False) -> None:
        self.procs: list[FakeProcess] = []
        self.exit_at_once = exit_at_once
        self.fail = fail

    async def __call__(
        self,
        argv: list[str],
        env: dict[str, str],
        cwd: str,
        on_line: Callable[[str], None],
        on_exit: Callable[[int], None],
    ) -> FakeProcess:
        await asyncio.sleep(0)
        if self.fail:
            raise FileNotFoundError(2, "No such file or directory", argv[0])
        proc = FakeProcess(env, on_exit)
        self.procs.append(proc)
        if self.exit_at_once is not None:
            proc.exit(self.exit_at_once)  # the exit callback runs first
        await asyncio.sleep(0)
        return proc


def definition(**kw: Any) -> AgentDefinition:
    return AgentDefinition(name="voice", tenant="acme", worker=["agent"], **kw)


async def until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.01)


@pytest.fixture
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(supervisor_policy, "BACKOFF_BASE", 0.05)


def test_an_exit_before_the_spawn_returned_is_not_lost(fast_backoff: None) -> None:
    # Defect 5: the exit callback ran before the instance was recorded, and
    # the supervisor counted an instance that did not exist, forever.
    spawner = FakeSpawner(exit_at_once=1)

    async def main() -> None:
        sup = AgentServerSupervisor(definition(), "ws://x", Keys(), lambda: (1, 1), spawn=spawner)
        sup.demand()
        await until(lambda: len(spawner.procs) >= 3)  # restarted, with backoff
        assert sup.processes <= 1
        (item,) = sup.status()
        assert item["exit_code"] == 1 and item["crashes"] >= 2
        await sup.close()

    asyncio.run(main())


def test_a_program_that_exits_at_once_is_restarted(fast_backoff: None) -> None:
    # The same with a real program: `false`.
    async def main() -> None:
        keys = Keys()
        sup = AgentServerSupervisor(
            AgentDefinition(name="f", worker=["false"]), "ws://x", keys, lambda: (1, 1)
        )
        sup.demand()
        await until(lambda: sup.starts >= 3)
        await until(lambda: sup.status()[0]["state"] == "backing off")
        assert sup.status()[0]["exit_code"] == 1 and sup.summary() == "backing off"
        await sup.close()
        assert keys.keys == {}  # every instance's key went with it

    asyncio.run(main())


def test_each_instance_gets_its_own_key_port_and_secret() -> None:
    spawner = FakeSpawner()
    keys = Keys()

    async def main() -> None:
        sup = AgentServerSupervisor(
            definition(min_instances=2, max_instances=2), "ws://here", keys, lambda: (0, 0),
            spawn=spawner,
        )  # fmt: skip
        await until(lambda: sup.processes == 2 and len(spawner.procs) == 2)
        envs = [p.env for p in spawner.procs]
        assert {e["LIVEKIT_URL"] for e in envs} == {"ws://here"}
        given = {e["LIVEKIT_API_KEY"]: e["LIVEKIT_API_SECRET"] for e in envs}
        assert len(given) == 2 and all(k.startswith("EDI_") for k in given)
        assert {k: (s, "acme") for k, s in given.items()} == keys.keys
        assert len({e["PORT"] for e in envs}) == 2
        first = spawner.procs[0]
        first.exit(0)  # its key is revoked when it exits
        await until(lambda: first.env["LIVEKIT_API_KEY"] in keys.removed)
        assert first.env["LIVEKIT_API_KEY"] not in keys.keys
        await sup.close()
        assert keys.keys == {}

    asyncio.run(main())


def test_start_answers_once_the_instance_registered_and_stop_waits_for_exits() -> None:
    spawner = FakeSpawner()

    async def main() -> None:
        sup = AgentServerSupervisor(definition(), "ws://x", Keys(), lambda: (0, 0), spawn=spawner)
        started = asyncio.ensure_future(sup.start(5.0))
        await until(lambda: sup.processes == 1 and len(spawner.procs) == 1)
        await asyncio.sleep(0.05)
        assert not started.done()  # running is not registered
        key = spawner.procs[0].env["LIVEKIT_API_KEY"]
        assert sup.owns(key)
        sup.worker_registered(key, "AW_1", "someone-else")  # not this agent: not counted
        await asyncio.sleep(0.01)
        assert not started.done()
        sup.worker_registered(key, "AW_2", "voice")
        assert await started == ""
        assert sup.status()[0]["state"] == "registered" and sup.summary() == "running"
        await sup.stop()
        assert spawner.procs[0].signals == ["TERM"] and sup.processes == 0
        assert sup.summary() == "stopped" and not sup.owns(key)
        await sup.close()

    asyncio.run(main())


def test_start_answers_with_the_crash() -> None:
    spawner = FakeSpawner(exit_at_once=3)

    async def main() -> None:
        sup = AgentServerSupervisor(definition(), "ws://x", Keys(), lambda: (0, 0), spawn=spawner)
        error = await sup.start(5.0)
        assert error == "agent server instance 1 exited with code 3 before it registered"
        await sup.close()

    asyncio.run(main())


def test_a_program_that_cannot_start_backs_off_with_the_reason() -> None:
    spawner = FakeSpawner(fail=True)
    keys = Keys()

    async def main() -> None:
        sup = AgentServerSupervisor(definition(), "ws://x", keys, lambda: (0, 0), spawn=spawner)
        error = await sup.start(5.0)
        assert "could not be started: [Errno 2] No such file or directory: 'agent'" in error
        assert sup.status()[0]["state"] == "backing off" and keys.keys == {}
        await sup.close()

    asyncio.run(main())


def test_scale_up_and_idle_scale_down(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(supervisor_policy, "CHECK_INTERVAL", 0.02)
    spawner = FakeSpawner()
    jobs = [(2, 1)]

    async def main() -> None:
        sup = AgentServerSupervisor(
            definition(max_instances=2, idle_timeout=0.2), "ws://x", Keys(), lambda: jobs[0],
            spawn=spawner,
        )  # fmt: skip
        sup.demand()
        await until(lambda: len(spawner.procs) == 1)
        sup.worker_registered(spawner.procs[0].env["LIVEKIT_API_KEY"], "AW_1", "voice")
        await until(lambda: len(spawner.procs) == 2)  # a job still waits: one more
        sup.worker_registered(spawner.procs[1].env["LIVEKIT_API_KEY"], "AW_2", "voice")
        await asyncio.sleep(0.1)
        assert len(spawner.procs) == 2  # max_instances
        jobs[0] = (0, 0)
        await until(lambda: sup.processes == 0)  # idle: down to min_instances (0)
        assert sup.starts == 2 and sup.summary() == "idle"
        await sup.close()

    asyncio.run(main())


def test_close_kills_what_does_not_exit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(supervisor_policy, "CLOSE_GRACE", 0.1)

    class Stubborn(FakeProcess):
        def terminate(self, grace: float) -> None:
            self.signals.append("TERM")  # and ignores it

    class StubbornSpawner(FakeSpawner):
        async def __call__(self, *args: Any) -> FakeProcess:
            proc = Stubborn(args[1], args[4])
            self.procs.append(proc)
            return proc

    spawner = StubbornSpawner()

    async def main() -> None:
        sup = AgentServerSupervisor(
            definition(min_instances=1), "ws://x", Keys(), lambda: (0, 0), spawn=spawner
        )
        await until(lambda: len(spawner.procs) == 1 and sup.status()[0]["state"] == "starting")
        await until(lambda: "pid" in sup.status()[0])
        await sup.close()
        assert spawner.procs[0].signals == ["TERM", "KILL"]

    asyncio.run(main())
