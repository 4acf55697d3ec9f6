"""What a local worker asks of the runtime that runs its jobs.

``JobInfo`` is what a job process is told about its job; ``JobRunner`` and
``RunningJob`` are what the native warm pool and the command runner
(``edgedispatch.runtime``) provide.  This module is imported into every
native pool process (through ``runtime.messages``): msgspec and the
standard library only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import msgspec


class JobInfo(msgspec.Struct, frozen=True):
    """What a native job is told about itself (becomes its ``JobContext``)."""

    job_id: str
    dispatch_id: str
    room: str
    metadata: str
    attributes: dict[str, str]
    agent_name: str
    url: str
    token: str


#: ``on_exit(code, error)``: code 0 and error "" is success; code is the
#: exit code, -N for signal N, or None when the job never ran or its exit
#: status is unknown.
OnExit = Callable[[int | None, str], None]


class RunningJob(Protocol):
    def terminate(self, grace: float = 10.0) -> None: ...

    def kill(self) -> None: ...


class JobRunner(Protocol):
    def run_job(self, info: JobInfo, on_exit: OnExit, *, max_duration: float = 0) -> RunningJob: ...
