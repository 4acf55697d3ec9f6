"""The states of a native pool and of each of its processes, and the only
moves between them.

Theory of operation
===================

A pool (``NativePool``) has one state, and so has each of its processes
(its "children").  Every change of either goes through ``move``, which
looks the change up in the tables below and raises ``InternalError``, naming
both states, for one that is not there.  A move missing from a table is a
bug of ours, never a peer's doing: what a peer may get wrong (a second
``Ready``, a second control connection) is checked by the caller before it
asks for the move, and refused as the peer's error.

Two rules, as in h11's ``_state.py``:

1. Which state may follow which is decided here, and only here; so is the
   one question every arrival order below comes down to (``settled``).
2. This file does not know what the pool *does* on a move (fork, send a
   job, signal, end a job).  That is the shell's (``native``), and when to
   fork is the policy's (``pool_policy``).

The pool
--------

NEW         constructed; ``start`` spawns the zygote and waits for its
            ``Loaded``.
RUNNING     the zygote is up and forks children on the policy's word.
RESTARTING  the zygote died.  Its children finish their jobs as orphans
            while a new zygote starts; new jobs wait for it.
BROKEN      the new zygote would not load the agent.  Jobs are refused:
            trying again would fail the same way, and nobody should wait
            for it.  Only ``close`` is left.
CLOSED      ``close`` was called (by ``start`` too, when it fails).  No job
            starts and none is ended by its child any more: ``close`` ends
            them all with one error.  Terminal.

Only a pool that was running restarts: a zygote dying while it loads the
agent makes ``start`` fail (NEW -> CLOSED), or the restart (RESTARTING ->
BROKEN).  Any state but CLOSED may be closed.

The child
---------

A child is learnt of from whichever comes first: the zygote's ``Forked`` or
the ``Hello`` of one of its two connections (control, and output: its fds 1
and 2).  They come on three sockets, so in any order.

FORKED     it exists; its control connection has not said ``Hello``.
CONNECTED  its control connection said ``Hello``: prewarm is running.
READY      it said ``Ready``: prewarmed, idle, waiting for a job.
BUSY       a job was sent to it.  A child runs one job, then exits.
FINALIZED  its end is settled: it left the pool, and its job, if it had
           one, was ended or given to another child.  Terminal.

Moves go forward only, one step at a time, or to FINALIZED from anywhere:
a process may die at any point of its life, and a child never goes back
(prewarm runs once; a job's process is never reused).  How far a child got
decides its end: one that dies before READY counts against the pool (the
policy backs off forking); one that dies READY was simply lost; one that
dies BUSY ends its job, or hands it to another child if the job had not
started yet (the policy's ``retry_job``).

Its end is three facts that come in any order, on three sockets: its exit
status (the zygote's ``Exited``) and the end of each of its connections.
It is settled once all three are in, so that its last output line and the
job's traceback are read before the job is ended.  The arrival orders:

1. connections, then ``Exited``: settled by the ``Exited``;
2. ``Exited``, then connections: settled by the last of them; if a
   grandchild keeps the output open, a grace timer settles it regardless;
3. ``Exited`` while still FORKED: its control connection may yet sit in the
   listener's accept queue, so having no open connection does not settle
   it.  The grace timer does, or a late ``Hello`` whose connection then
   closes.

An *orphan* is a child whose zygote is gone (or never was ours: one that
connected after its zygote died).  Nobody will report its exit, so for
``settled`` its exit is known; it is never given a job (its ``Ready``
retires it), and its death never counts against the pool, whose new zygote
has nothing to do with it.  Being an orphan is a fact about the child's
parent, not a step of its life, so it is a flag beside the state.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import TypeVar

from edgedispatch.errors import InternalError

__all__ = [
    "CHILD_TRANSITIONS",
    "POOL_TRANSITIONS",
    "ChildState",
    "PoolState",
    "move",
    "settled",
]


class PoolState(enum.Enum):
    # The values are what error texts say: "native pool 'x' is broken".
    NEW = "new"
    RUNNING = "running"
    RESTARTING = "restarting"
    BROKEN = "broken"
    CLOSED = "closed"


class ChildState(enum.Enum):
    FORKED = "forked"
    CONNECTED = "connected"
    READY = "ready"
    BUSY = "busy"
    FINALIZED = "finalized"


_P = PoolState
POOL_TRANSITIONS: Mapping[PoolState, frozenset[PoolState]] = {
    _P.NEW: frozenset({_P.RUNNING, _P.CLOSED}),
    _P.RUNNING: frozenset({_P.RESTARTING, _P.CLOSED}),
    _P.RESTARTING: frozenset({_P.RUNNING, _P.BROKEN, _P.CLOSED}),
    _P.BROKEN: frozenset({_P.CLOSED}),
    _P.CLOSED: frozenset(),
}

_C = ChildState
CHILD_TRANSITIONS: Mapping[ChildState, frozenset[ChildState]] = {
    _C.FORKED: frozenset({_C.CONNECTED, _C.FINALIZED}),
    _C.CONNECTED: frozenset({_C.READY, _C.FINALIZED}),
    _C.READY: frozenset({_C.BUSY, _C.FINALIZED}),
    _C.BUSY: frozenset({_C.FINALIZED}),
    _C.FINALIZED: frozenset(),
}

_TABLES: Mapping[type[enum.Enum], Mapping[enum.Enum, frozenset[enum.Enum]]] = {
    PoolState: POOL_TRANSITIONS,  # type: ignore[dict-item]
    ChildState: CHILD_TRANSITIONS,  # type: ignore[dict-item]
}

S = TypeVar("S", PoolState, ChildState)


def move(old: S, new: S, what: str) -> S:
    """Return ``new`` if its table allows going there from ``old``; raise
    ``InternalError`` otherwise.  ``what`` names the pool or child, for
    the error."""
    if new not in _TABLES[type(old)][old]:
        raise InternalError(f"{what}: illegal transition {old.name} -> {new.name}")
    return new


def settled(state: ChildState, *, exit_known: bool, connections_open: bool) -> bool:
    """Whether a child's end is all in (see the arrival orders above).
    ``exit_known``: the zygote reported its exit status, or it is an
    orphan.  The grace timer settles a child regardless of this."""
    return exit_known and not connections_open and state is not ChildState.FORKED
