"""The domain's state, written to the store as it changes, and read back
after a restart.

The journal follows the domain events (``dispatch.events``); the domain
never calls the store.  Each event becomes one queued statement, which the
store's writer process commits with the others of its batch; a client's
answer waits for that commit where it must (``App``).

Rows hold the records as JSON (msgspec), with what recovery orders or
filters by in columns of their own: a sequence number (creation order, so
that pending jobs are offered again in their original order) and a job's
queue deadline, in wall-clock nanoseconds (monotonic time does not survive
a restart; it is rebuilt from the wall clock).  The sequence number is also
the row's key: the journal keeps each live dispatch's and job's number, so
that its later changes find the row without an index on the text ids.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, NamedTuple

import msgspec

from edgedispatch._core.codes import FailReason, JobState
from edgedispatch.dispatch.compact import shrink
from edgedispatch.dispatch.events import (
    DispatchCreated,
    DispatchDeleted,
    DomainEvent,
    JobChanged,
    JobForgotten,
    RoomClosed,
    RoomOpened,
)
from edgedispatch.dispatch.jobs import HELD
from edgedispatch.dispatch.records import DispatchRec, JobRec, RoomRec
from edgedispatch.store.sqlite import SqliteStore

if TYPE_CHECKING:
    from edgedispatch.dispatch.domain import Domain

log = logging.getLogger("edgedispatch.store")

KINDS = (RoomOpened, RoomClosed, DispatchCreated, DispatchDeleted, JobChanged, JobForgotten)
_encode = msgspec.json.Encoder().encode


class Recovered(NamedTuple):
    """What the store held at start-up, oldest first."""

    rooms: list[RoomRec]
    dispatches: list[DispatchRec]
    #: (record, queue deadline in wall-clock ns) of each job
    jobs: list[tuple[JobRec, int]]

    def summary(self) -> str:
        pending = sum(1 for job, _ in self.jobs if not job.state.terminal)
        return f"{len(self.rooms)} rooms, {len(self.dispatches)} dispatches, {pending} pending jobs"


class Journal:
    """:param queue_timeout: seconds a new job may wait in the queue (its
    deadline is stored with it)."""

    def __init__(self, store: SqliteStore, queue_timeout: float) -> None:
        self._store = store
        self._queue_ns = int(queue_timeout * 1e9)
        last = store.rows("SELECT MAX(seq) FROM (SELECT seq FROM dispatches UNION ALL "
                          "SELECT seq FROM jobs)")  # fmt: skip
        self._seq = int(last[0][0] or 0)
        # id -> row (sequence number) of each dispatch and job in the store.
        self._dispatch_rows: dict[str, int] = {}
        self._job_rows: dict[str, int] = {}
        # The rows of jobs recorded since the store last sent a frame to
        # its writer, still this process's lists: a change before it goes
        # (a new job offered and assigned within a few milliseconds, as
        # under load) goes into the row, not into an UPDATE.
        self._fresh: dict[str, list[Any]] = {}
        self._fresh_send = -1
        self._handlers: dict[type, Any] = {
            JobChanged: self._job_changed,
            JobForgotten: self._job_forgotten,
            DispatchCreated: self._dispatch_created,
            DispatchDeleted: self._dispatch_deleted,
            RoomOpened: self._room_opened,
            RoomClosed: self._room_closed,
        }

    def recover(self) -> Recovered:
        rooms = [
            msgspec.json.decode(r, type=RoomRec)
            for (r,) in self._store.rows("SELECT record FROM rooms ORDER BY rowid")
        ]
        dispatches = []
        for seq, r in self._store.rows("SELECT seq, record FROM dispatches ORDER BY seq"):
            dispatch = msgspec.json.decode(r, type=DispatchRec)
            self._dispatch_rows[dispatch.id] = seq
            dispatches.append(dispatch)
        jobs = []
        for seq, r, deadline, state, worker_id, reason, updated_ns in self._store.rows(
            "SELECT seq, record, deadline_ns, state, worker_id, reason, updated_ns FROM jobs"
            " ORDER BY seq"
        ):
            job = msgspec.json.decode(r, type=JobRec)
            self._job_rows[job.id] = seq
            job.state, job.worker_id = JobState(state), worker_id
            job.reason, job.updated_ns = FailReason(reason), updated_ns
            jobs.append((job, int(deadline)))
        return Recovered(rooms, dispatches, jobs)

    def recover_into(self, domain: Domain, now: float) -> Recovered:
        """Put what the store held back into ``domain``, and journal its
        changes from then on.  The journal listens while the state is put
        back, so that what recovery itself changes is written too (a job
        whose queue deadline passed while the server was down fails; a
        held one waits to be claimed back), in one transaction.  Found by
        bench faults: a failure made in recovery was not written, and the
        job failed again at every restart, its dispatch never done."""
        recovered = self.recover()
        domain.subscribe(self.on_event, *KINDS)
        with self._store.recovering():
            domain.restore(*recovered, now)
        return recovered

    def on_event(self, event: DomainEvent) -> None:
        handler = self._handlers.get(type(event))
        if handler is not None:
            handler(event)

    def _job_changed(self, event: JobChanged) -> None:
        job, before = event.job, event.before
        if before is None:
            self._seq += 1
            self._job_rows[job.id] = self._seq
            row: list[Any] = [self._seq, job.id, _encode(job), job.updated_ns + self._queue_ns,
                   int(job.state), job.worker_id, int(job.reason), job.updated_ns]  # fmt: skip
            self._store.write(_INSERT_JOB, row)
            if self._store.deferred:
                self._fresh_rows()[job.id] = row
            return
        if (job.state, before) in _NOT_WRITTEN:
            return
        change = (int(job.state), job.worker_id, int(job.reason), job.updated_ns)
        # Back in the queue after its worker: the core gives it a fresh wait,
        # and so does the store (with the stale one, a restart after it
        # failed the job at once: found by bench faults).
        requeued = job.state == JobState.QUEUED and before in HELD
        deadline = job.updated_ns + self._queue_ns
        fresh = self._fresh_rows().get(job.id)
        if fresh is not None:
            fresh[4:] = change
            if requeued:
                fresh[3] = deadline
        else:
            by_seq, by_id = _REQUEUE if requeued else _UPDATE
            params = (*change, deadline) if requeued else change
            seq = self._job_rows.get(job.id)
            if seq is not None:
                self._store.write(by_seq, (*params, seq))
            else:  # not expected: every job's row is known (slower, still right)
                self._store.write(by_id, (*params, job.id))
        if job.state == JobState.OFFERED:
            # The worker's JobAssignment waits for this write, not for the
            # ASSIGNED that follows (``worker.session``).
            self._store.mark(job.id)

    def _job_forgotten(self, event: JobForgotten) -> None:
        seq = self._job_rows.pop(event.job.id, None)
        shrink(self._job_rows)
        self._fresh_rows().pop(event.job.id, None)
        self._store.unmark(event.job.id)
        if seq is not None:
            self._store.write("DELETE FROM jobs WHERE seq = ?", (seq,))
        else:
            self._store.write("DELETE FROM jobs WHERE id = ?", (event.job.id,))

    def _dispatch_created(self, event: DispatchCreated) -> None:
        rec = event.dispatch
        seq = self._dispatch_rows.get(rec.id)
        if seq is None:
            self._seq += 1
            seq = self._dispatch_rows[rec.id] = self._seq
        self._store.write(
            "INSERT OR REPLACE INTO dispatches (seq, id, record) VALUES (?, ?, ?)",
            (seq, rec.id, _encode(rec)),
        )

    def _dispatch_deleted(self, event: DispatchDeleted) -> None:
        seq = self._dispatch_rows.pop(event.dispatch.id, None)
        shrink(self._dispatch_rows)
        if seq is not None:
            self._store.write("DELETE FROM dispatches WHERE seq = ?", (seq,))
        else:
            self._store.write("DELETE FROM dispatches WHERE id = ?", (event.dispatch.id,))

    def _room_opened(self, event: RoomOpened) -> None:
        room = msgspec.structs.replace(event.room, participants={})
        self._store.write(
            "INSERT OR REPLACE INTO rooms (tenant, name, record) VALUES (?, ?, ?)",
            (room.tenant, room.name, _encode(room)),
        )

    def _room_closed(self, event: RoomClosed) -> None:
        self._store.write(
            "DELETE FROM rooms WHERE tenant = ? AND name = ?",
            (event.room.tenant, event.room.name),
        )

    def _fresh_rows(self) -> dict[str, list[Any]]:
        """The jobs recorded since the store last sent a frame (those
        before are with the writer: they are let go)."""
        sends = self._store.sends
        if self._fresh_send != sends:
            self._fresh.clear()
            self._fresh_send = sends
        return self._fresh


# One string object each: the writer groups runs of the same statement.
_INSERT_JOB = (
    "INSERT OR REPLACE INTO jobs (seq, id, record, deadline_ns, state, worker_id, reason,"
    " updated_ns) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_UPDATE_JOB = "UPDATE jobs SET state = ?, worker_id = ?, reason = ?, updated_ns = ? WHERE seq = ?"

_UPDATE_JOB_BY_ID = (
    "UPDATE jobs SET state = ?, worker_id = ?, reason = ?, updated_ns = ? WHERE id = ?"
)
#: A held job back in the queue, with its new queue deadline.
_REQUEUE_JOB = (
    "UPDATE jobs SET state = ?, worker_id = ?, reason = ?, updated_ns = ?, deadline_ns = ?"
    " WHERE seq = ?"
)
_REQUEUE_JOB_BY_ID = _REQUEUE_JOB.replace("WHERE seq", "WHERE id")
#: (by the row's sequence number, by the job's id) of each kind of change.
_UPDATE = (_UPDATE_JOB, _UPDATE_JOB_BY_ID)
_REQUEUE = (_REQUEUE_JOB, _REQUEUE_JOB_BY_ID)


#: (state, before) changes not written.  What recovery tells apart is
#: written: queued (offered again), offered to or held by a worker (waits
#: for that worker to claim it back), ended.  An offer is written so that
#: the JobAssignment that follows waits only for it: a job whose store says
#: OFFERED to W is W's to claim after a restart, so a crash between the
#: assignment and its ASSIGNED cannot run it twice.  A return to the queue
#: after an offer is not written (after a restart the job waits for W to
#: claim it, then queues), nor ASSIGNED becoming RUNNING.
_NOT_WRITTEN = frozenset(
    [
        (JobState.QUEUED, JobState.OFFERED),
        (JobState.RUNNING, JobState.ASSIGNED),
        # A queued job put back after a restart, queued as it was.
        (JobState.QUEUED, JobState.QUEUED),
        # A job put back waiting to be claimed, as it was: its row keeps
        # when the wait began (updated_ns), which the next restart counts
        # the rest of the grace from.
        (JobState.ORPHANED, JobState.ORPHANED),
    ]
)
