"""The states of an agent-server instance, the events that move it, and the
only moves there are.

Theory of operation
===================

An agent server (a ``worker = [...]`` definition) runs as up to
``max_instances`` *instances*.  An instance is a place for one process at a
time, numbered from 1: the process it runs now, and when that one dies
without being asked to, the next one, after a backoff.  Each instance has
one state, and every change of it goes through ``apply``, which looks the
(state, event) pair up in ``TRANSITIONS`` and raises ``InternalError``,
naming both, for a pair that is not there.  A missing pair is a bug of
ours, never a program's doing: whatever a program may do (exit at once,
never register, register twice) is a legal event in every state where it
can happen.

Two rules, as in h11's ``_state.py``:

1. Which state follows which is decided here, and only here.
2. This file does not know what a move *does* (spawn, signal, answer a
   waiting ``agent start``) nor *when* an instance is wanted: that is the
   policy's (``supervisor_policy``), and the shell's (``supervisor``).

The states
----------

SPAWNING    the shell was asked to start a process; it has no pid yet.
STARTING    its process runs; no worker of it has registered yet.
REGISTERED  a worker of its process registered (with the instance's own
            API key, for the definition's agent name).
TIMED_OUT   it did not register within ``REGISTER_TIMEOUT``: its process
            was asked to stop, and its exit counts as a crash.
STOPPING    nobody wants it any more (stop, idle, shutdown): its process
            was asked to stop, or will be as soon as it has a pid.
BACKOFF     its process exited without being asked to (a crash, whatever
            the exit code: code 0 too), or could not be started.  The next
            one starts when the backoff ends.
CRASHED     as BACKOFF, but it is not wanted any more, so nothing restarts
            it.  It stays listed, with its last exit, until it is reused.
GONE        it stopped as asked: the policy forgets it.  Terminal.

An instance is made in SPAWNING.  The events:

SPAWN             start a process: a new one, or again after a crash.
SPAWNED           the process exists (it has a pid).
SPAWN_FAILED      it could not be started.
REGISTERED        a worker of it registered.
LOST              its last registered worker went away (the process may
                  reconnect; it is starting again).
REGISTER_TIMEOUT  it has been STARTING for ``REGISTER_TIMEOUT``.
EXITED            its process exited.
RETIRE            it is not wanted: stop it.

Arrival orders.  A process may exit before the call that spawned it has
returned (``false`` exits while its output pipe is being connected): the
shell holds such an exit back and reports it after SPAWNED, so EXITED never
arrives in SPAWNING.  A worker may register while the process is being
stopped, or go away after it exited: those are late and change nothing
(the policy drops events of a process it no longer runs).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

from edgedispatch.errors import InternalError

__all__ = ["LABEL", "LIVE", "PROCESS", "TRANSITIONS", "Event", "State", "apply"]


class State(enum.Enum):
    SPAWNING = enum.auto()
    STARTING = enum.auto()
    REGISTERED = enum.auto()
    TIMED_OUT = enum.auto()
    STOPPING = enum.auto()
    BACKOFF = enum.auto()
    CRASHED = enum.auto()
    GONE = enum.auto()


class Event(enum.Enum):
    SPAWN = enum.auto()
    SPAWNED = enum.auto()
    SPAWN_FAILED = enum.auto()
    REGISTERED = enum.auto()
    LOST = enum.auto()
    REGISTER_TIMEOUT = enum.auto()
    EXITED = enum.auto()
    RETIRE = enum.auto()


_S, _E = State, Event

#: (state, event) -> the next state.  Every pair not here is a bug.
TRANSITIONS: Mapping[tuple[State, Event], State] = {
    (_S.SPAWNING, _E.SPAWNED): _S.STARTING,
    (_S.SPAWNING, _E.SPAWN_FAILED): _S.BACKOFF,
    # Not wanted before it even has a pid: it is stopped once it has one.
    (_S.SPAWNING, _E.RETIRE): _S.STOPPING,
    (_S.STARTING, _E.REGISTERED): _S.REGISTERED,
    (_S.STARTING, _E.REGISTER_TIMEOUT): _S.TIMED_OUT,
    (_S.STARTING, _E.EXITED): _S.BACKOFF,
    (_S.STARTING, _E.RETIRE): _S.STOPPING,
    # A process may register more than one worker.
    (_S.REGISTERED, _E.REGISTERED): _S.REGISTERED,
    (_S.REGISTERED, _E.LOST): _S.STARTING,
    (_S.REGISTERED, _E.EXITED): _S.BACKOFF,
    (_S.REGISTERED, _E.RETIRE): _S.STOPPING,
    # Too late to count: it is being stopped for not registering in time.
    (_S.TIMED_OUT, _E.REGISTERED): _S.TIMED_OUT,
    (_S.TIMED_OUT, _E.LOST): _S.TIMED_OUT,
    (_S.TIMED_OUT, _E.EXITED): _S.BACKOFF,
    (_S.TIMED_OUT, _E.RETIRE): _S.STOPPING,
    (_S.STOPPING, _E.SPAWNED): _S.STOPPING,
    (_S.STOPPING, _E.SPAWN_FAILED): _S.GONE,
    (_S.STOPPING, _E.REGISTERED): _S.STOPPING,
    (_S.STOPPING, _E.LOST): _S.STOPPING,
    (_S.STOPPING, _E.EXITED): _S.GONE,
    (_S.STOPPING, _E.RETIRE): _S.STOPPING,
    (_S.BACKOFF, _E.SPAWN): _S.SPAWNING,
    (_S.BACKOFF, _E.RETIRE): _S.CRASHED,
    (_S.CRASHED, _E.SPAWN): _S.SPAWNING,
    (_S.CRASHED, _E.RETIRE): _S.CRASHED,
}

#: States with a process that runs, or is being started.
PROCESS = frozenset({_S.SPAWNING, _S.STARTING, _S.REGISTERED, _S.TIMED_OUT, _S.STOPPING})
#: States that count as a wanted instance (not stopping, not given up).
LIVE = frozenset({_S.SPAWNING, _S.STARTING, _S.REGISTERED, _S.TIMED_OUT, _S.BACKOFF})

#: What ``agent list`` says of each state.
LABEL: Mapping[State, str] = {
    _S.SPAWNING: "starting",
    _S.STARTING: "starting",
    _S.REGISTERED: "registered",
    _S.TIMED_OUT: "stopping",
    _S.STOPPING: "stopping",
    _S.BACKOFF: "backing off",
    _S.CRASHED: "crashed",
    _S.GONE: "gone",
}


def apply(state: State, event: Event, what: str) -> State:
    """The state ``event`` moves ``state`` to; ``InternalError`` if the
    table has no such move.  ``what`` names the instance, for the error."""
    new = TRANSITIONS.get((state, event))
    if new is None:
        raise InternalError(f"{what}: illegal event {event.name} in state {state.name}")
    return new
