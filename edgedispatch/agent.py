"""The API a native agent's code imports.

A native agent is a module with an entrypoint::

    from edgedispatch.agent import JobContext

    async def entrypoint(ctx: JobContext) -> None:
        print("joining", ctx.room, "at", ctx.url)
        ...

configured as ``entrypoint = "pkg.module:entrypoint"``, and optionally a
plain ``def prewarm() -> None`` that each pool process runs once before it
takes a job (load models there).  Every job runs in its own process: the job
ends when the entrypoint returns (success), raises (failure, with the
traceback) or ``ctx.shutdown()`` is called (success).

This module is imported into every pool process: standard library only, and
nothing heavy.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

ShutdownCallback = Callable[[str], Awaitable[None]]


class JobContext:
    """One job, as its entrypoint sees it.  Read-only apart from the two
    shutdown methods."""

    __slots__ = (
        "_job_id",
        "_dispatch_id",
        "_room",
        "_metadata",
        "_attributes",
        "_agent_name",
        "_url",
        "_token",
        "_callbacks",
        "_reason",
        "_on_shutdown",
        "_connected",
    )

    def __init__(
        self,
        *,
        job_id: str,
        dispatch_id: str,
        room: str,
        metadata: str,
        attributes: dict[str, str],
        agent_name: str,
        url: str,
        token: str,
        on_shutdown: Callable[[str], None] | None = None,
    ) -> None:
        self._job_id = job_id
        self._dispatch_id = dispatch_id
        self._room = room
        self._metadata = metadata
        self._attributes = dict(attributes)
        self._agent_name = agent_name
        self._url = url
        self._token = token
        self._callbacks: list[ShutdownCallback] = []
        self._reason: str | None = None
        # Set by the runtime: ends the entrypoint (cancels its task).
        self._on_shutdown = on_shutdown
        self._connected: Any = None

    @property
    def job_id(self) -> str:
        return self._job_id

    @property
    def dispatch_id(self) -> str:
        return self._dispatch_id

    @property
    def room(self) -> str:
        """The room's name."""
        return self._room

    @property
    def metadata(self) -> str:
        """The dispatch's metadata, as given to CreateDispatch."""
        return self._metadata

    @property
    def attributes(self) -> dict[str, str]:
        """The job's attributes (a copy: changing it changes nothing)."""
        return dict(self._attributes)

    @property
    def agent_name(self) -> str:
        return self._agent_name

    @property
    def url(self) -> str:
        """The server URL the agent joins the room at."""
        return self._url

    @property
    def token(self) -> str:
        """The agent's JWT for the room."""
        return self._token

    async def connect(self, *, auto_subscribe: bool = True) -> Any:
        """Join the job's room as the agent, through the ``livekit`` rtc SDK
        (an optional extra: ``pip install edgedispatch[agents]``), with the
        job's token; returns the connected ``livekit.rtc.Room``.  The agent
        leaves the room when the job ends.  A second call returns the same
        room."""
        if self._connected is not None:
            return self._connected
        try:
            from livekit import rtc
        except ImportError:
            raise RuntimeError(
                "JobContext.connect() needs the livekit rtc SDK: pip install 'edgedispatch[agents]'"
            ) from None
        room = rtc.Room()
        await room.connect(self._url, self._token, rtc.RoomOptions(auto_subscribe=auto_subscribe))
        self._connected = room
        return room

    @property
    def shutdown_reason(self) -> str | None:
        """None until ``shutdown`` is called (by the agent or the runtime)."""
        return self._reason

    def shutdown(self, reason: str = "") -> None:
        """End the job: the entrypoint is cancelled, the shutdown callbacks
        run, and the process exits with success.  Only the first call counts.
        Safe to call from any thread."""
        if self._reason is not None:
            return
        self._reason = reason
        if self._on_shutdown is not None:
            self._on_shutdown(reason)

    def add_shutdown_callback(self, callback: ShutdownCallback) -> None:
        """Run ``await callback(reason)`` when the job ends, however it ends
        short of a crash: in the order added, after the entrypoint.  The
        reason is "" when the entrypoint returned on its own."""
        self._callbacks.append(callback)

    async def _run_shutdown_callbacks(self) -> None:
        # Called once by the runtime.  A failing callback must not stop the
        # others (they release resources); its traceback goes to stderr, the
        # job's log.
        reason = self._reason or ""
        for callback in self._callbacks:
            try:
                await callback(reason)
            except Exception:
                print(f"shutdown callback {callback!r} failed:", file=sys.stderr)
                traceback.print_exc()
        if self._connected is not None:  # after the callbacks: they may still talk
            try:
                await self._connected.disconnect()
            except Exception:
                traceback.print_exc()

    def __repr__(self) -> str:
        return f"JobContext(job_id={self._job_id!r}, room={self._room!r})"
