"""A real edgedispatch server per test, in a thread with its own event loop,
on an ephemeral port.  Every functional test runs twice, on uvloop and on
plain asyncio (``loop_kind``, autouse): servers started by ``start_server``
and server processes started with ``serve_argv`` use that loop."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import msgspec
import pytest
import uvloop

from edgedispatch import config
from edgedispatch.config.agents import AgentDefinition
from edgedispatch.server import Server

T = TypeVar("T")


class ServerThread:
    def __init__(self, cfg: config.Config, loop_kind: str) -> None:
        self.cfg = cfg
        self.loop_kind = loop_kind
        self.loop = uvloop.new_event_loop() if loop_kind == "uvloop" else asyncio.new_event_loop()
        self.server = Server(cfg)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._ready = threading.Event()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self.server.start())
        self._ready.set()
        self.loop.run_forever()

    def start(self) -> ServerThread:
        self._thread.start()
        assert self._ready.wait(10), "server did not start"
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.server.port}"

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the server's loop (its state is not thread-safe)."""

        async def run() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    @property
    def domain(self) -> Any:
        return self.server.domain

    def now(self) -> float:
        """The server loop's clock (call from the server's thread)."""
        return self.loop.time()

    def step(self, fn: Callable[[Any, float], T]) -> T:
        """Run ``fn(domain, now)`` on the server's loop and step the domain
        after it, as an adapter does after an input."""

        def run() -> T:
            now = self.loop.time()
            try:
                return fn(self.domain, now)
            finally:
                self.domain.step(now)

        return self.call(run)

    def stop(self) -> None:
        async def close() -> None:
            await self.server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()
            self.loop.stop()

        asyncio.run_coroutine_threadsafe(close(), self.loop)
        self._thread.join(10)
        self.loop.close()


def serve_argv(loop_kind: str, *args: str) -> list[str]:
    """``edgedispatch serve --dev --port 0 --loop LOOP ARGS``."""
    return [
        sys.executable, "-m", "edgedispatch", "serve", "--dev", "--port", "0",
        "--loop", loop_kind, *args,
    ]  # fmt: skip


def serve_once(loop_kind: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The server as a process, for a configuration it must refuse: returns
    once it has exited."""
    return subprocess.run(serve_argv(loop_kind, *args), capture_output=True, text=True, timeout=30)


def make_config(**sections: Any) -> config.Config:
    base = config.load(dev=True, env={}, overrides={"port": 0})
    for name, values in sections.items():
        if name == "tenants":  # {tenant name: {api key: secret}}, or its TenantConfig fields
            tenants = [
                config.TenantConfig(t, **v) if "keys" in v else config.TenantConfig(t, v)
                for t, v in values.items()
            ]
            base = msgspec.structs.replace(base, tenants=tenants)
            continue
        if name == "source":  # the config file's path (what tenants must not read)
            base = msgspec.structs.replace(base, source=values)
            continue
        if name == "agents":  # a list of definition dicts
            agents = [msgspec.convert(a, AgentDefinition) for a in values]
            base = msgspec.structs.replace(base, agents=agents)
            continue
        section = getattr(base, name)
        base = msgspec.structs.replace(base, **{name: msgspec.structs.replace(section, **values)})
    return config.validate(base)


#: ``EDGEDISPATCH_TEST_LOOPS=uvloop`` runs each test on one loop (the pass
#: on the pure-Python core does: both loops are covered by the first pass).
LOOPS = os.environ.get("EDGEDISPATCH_TEST_LOOPS", "uvloop,asyncio").split(",")


def sees_the_loop(item: pytest.Item) -> bool:
    """Whether a test asks for ``loop_kind``, itself or through a fixture it
    asks for (``start_server`` does).  One that does not has it only as the
    autouse fixture, and cannot tell the loops apart (a test of the CLI's
    token command, which starts no server, say)."""
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return True
    seen: set[str] = set()
    wanted = list(info.argnames)
    while wanted:
        name = wanted.pop()
        if name == "loop_kind":
            return True
        if name not in seen:
            seen.add(name)
            for fixturedef in info.name2fixturedefs.get(name, ()):
                wanted += fixturedef.argnames
    return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``media`` drive real WebRTC clients and cost seconds
    each: they run once, on uvloop and the compiled core, which keeps the
    suite within CI's budget.  The few also marked ``all_loops`` check the
    rooms on plain asyncio and the pure-Python core as well.  Tests marked
    ``once`` (a whole benchmark run, say) run once the same way, and so do
    tests that cannot see the loop (``sees_the_loop``)."""
    pure = os.environ.get("EDGEDISPATCH_NO_EXTENSIONS") == "1"
    keep, drop = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        loop = callspec.params.get("loop_kind") if callspec is not None else None
        once = (
            item.get_closest_marker("once")
            or (item.get_closest_marker("media") and not item.get_closest_marker("all_loops"))
            or (loop == "asyncio" and not sees_the_loop(item))
        )
        (drop if once and (pure or loop == "asyncio") else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture(params=LOOPS, autouse=True)
def loop_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture
def start_server(loop_kind: str) -> Iterator[Callable[..., ServerThread]]:
    started: list[ServerThread] = []

    def start(kind: str | None = None, **sections: Any) -> ServerThread:
        srv = ServerThread(make_config(**sections), kind or loop_kind).start()
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()
