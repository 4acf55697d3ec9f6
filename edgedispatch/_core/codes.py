"""The vocabulary of the scheduling core: event kinds, action kinds, states
and reasons.

This module is the single source of these numbers.  The core reads them at
import time (see ``scheduler_py.py``), and the C ring only carries them.
"""

from __future__ import annotations

from enum import IntEnum
from typing import NamedTuple


class EventKind(IntEnum):
    """Events that go into the core (``ed_record.kind`` on the event ring)."""

    WORKER_REGISTER = 1  #: worker, arg=agent key, extra=slot cap
    WORKER_UPDATE = 2  #: worker, arg=WorkerStatus, value=load, extra=job count
    WORKER_DISCONNECT = 3  #: worker
    WORKER_DRAIN = 4  #: worker
    JOB_SUBMIT = 5  #: job, arg=agent key, value=queue deadline, extra=RestartPolicy
    JOB_ACCEPT = 6  #: job, worker
    JOB_REJECT = 7  #: job, worker
    JOB_STATUS = 8  #: job, arg=JobStatus (RUNNING, SUCCESS or FAILED)
    JOB_CANCEL = 9  #: job, arg=FailReason recorded as the cancel reason
    JOB_MIGRATE = 10  #: job, worker: a reconnected worker claims a running job
    #: job, value=when its wait to be claimed back ends: a job recovered
    #: held after a restart whose wait began before the restart
    JOB_RECLAIM_BY = 11


class ActionKind(IntEnum):
    """Actions that come out of the core (``ed_record.kind`` on the action ring)."""

    OFFER = 1  #: job, worker, arg=attempt number (1 = first), value=offer deadline
    ASSIGN = 2  #: job, worker
    TERMINATE = 3  #: job, worker
    JOB_FAILED = 4  #: job, arg=FailReason
    JOB_STATE = 5  #: job, worker (or -1), arg=JobState, extra=FailReason


class WorkerStatus(IntEnum):
    """What a worker reports (LiveKit's ``WorkerStatus`` plus our own states)."""

    AVAILABLE = 0  #: WS_AVAILABLE
    FULL = 1  #: WS_FULL
    DRAINING = 2  #: told to drain; never offered new work again


class JobState(IntEnum):
    """Where a job is.  QUEUED, OFFERED, ASSIGNED, RUNNING and ORPHANED are
    pending; SUCCESS, FAILED and CANCELLED are terminal and final."""

    QUEUED = 0  #: waiting for a worker (FIFO per agent key)
    OFFERED = 1  #: an availability request is out; one slot is held
    ASSIGNED = 2  #: accepted; the assignment went out; one slot is held
    RUNNING = 3  #: the worker reported JS_RUNNING; one slot is held
    ORPHANED = 4  #: its worker disconnected; it can be claimed back
    SUCCESS = 5
    FAILED = 6
    CANCELLED = 7

    @property
    def terminal(self) -> bool:
        return self >= JobState.SUCCESS


class JobStatus(IntEnum):
    """What a worker reports for a job: LiveKit's ``JobStatus`` numbers."""

    PENDING = 0
    RUNNING = 1
    SUCCESS = 2
    FAILED = 3


class RestartPolicy(IntEnum):
    """LiveKit's ``JobRestartPolicy`` numbers."""

    ON_FAILURE = 0  #: JRP_ON_FAILURE: run it again elsewhere if its worker fails
    NEVER = 1  #: JRP_NEVER


class FailReason(IntEnum):
    """Why a job ended without success, or why it was cancelled."""

    NONE = 0
    NO_CAPACITY = 1  #: its queue deadline passed before any worker took it
    MAX_ATTEMPTS = 2  #: offered the allowed number of times, never accepted
    WORKER_LOST = 3  #: its worker went away and did not claim it back
    JOB_ERROR = 4  #: the worker reported JS_FAILED
    CANCELLED = 5  #: cancelled by the caller (dispatch or room deleted)
    REJECTED = 6  #: a worker declined it and asked that it not run elsewhere
    ROOM_CLOSED = 7  #: its room closed
    MAX_DURATION = 8  #: it ran longer than the configured maximum


class WaitReason(IntEnum):
    """Why a pending job is not running yet (answered by queries)."""

    NOT_WAITING = 0  #: the job is not queued
    NO_WORKERS = 1  #: no worker with its agent key is registered
    ALL_BUSY = (
        2  #: workers exist, but each is FULL, draining, over the load threshold or out of slots
    )
    ALL_TRIED = 3  #: every available worker turned it down (for a moment: it goes round again)
    BACKOFF = 4  #: waiting out the retry delay after a failed offer


# What the core's queries return (``Scheduler.worker_info``, ``job_info``,
# ``key_info``): numbers, as the core keeps them, with names.


#: In a JOB_SUBMIT's policy word, beside the RestartPolicy: the job is
#: recovered after a restart and was held by a worker then (it is not
#: offered: it waits to be claimed back).
SUBMIT_RESTORED_HELD = 2

#: A job's flag in the core: a TERMINATE went out, and the job ends
#: CANCELLED (``scheduler_py`` and ``decisions_py`` both read it).
JOB_TERMINATING = 1


class WorkerInfo(NamedTuple):
    key: int  #: agent key handle
    status: int  #: a WorkerStatus
    load: float  #: as last reported, 0..1
    slots: int  #: slot cap
    used: int  #: slots held by offered, assigned and running jobs
    job_count: int  #: as last reported
    serial: int  #: this registration's number (a re-registered handle gets a new one)
    eligible: bool  #: would get an offer now
    predicted: float  #: its load now: the last report, moved by jobs taken or ended since
    declined: bool  #: declined an offer and has not reported or ended a job since


class JobInfo(NamedTuple):
    state: int  #: a JobState
    key: int  #: agent key handle
    worker: int  #: worker handle, or -1
    attempts: int  #: offers made so far
    reason: int  #: a FailReason
    deadline: float  #: queue deadline
    terminating: bool  #: a TERMINATE went out


class KeyInfo(NamedTuple):
    workers: int  #: registered
    eligible: int  #: would get an offer now
    queued: int  #: jobs in the FIFO
