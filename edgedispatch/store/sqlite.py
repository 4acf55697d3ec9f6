"""The embedded store: one SQLite database in the data directory.

Why SQLite: embedded, transactional, crash-safe in WAL mode, in the
standard library, with an online backup API and an integrity check; a
server on one box needs nothing more (ecosystem.md).

SQLite blocks, so every write goes through one writer process
(``store.writer``; a process rather than a thread, since a thread shares
the GIL with the event loop and SQLite hands it back and forth at every
row): the event loop queues statements (``write``), sends each pass's as
one frame and, where a client must not get its answer before the write is
durable, waits for ``flushed()``.  The writer takes everything that has
come as one transaction (group commit): one fsync for all the requests of
a burst.  Reads happen once, at start-up, before the server listens
(``load``, ``rows``), on the server's own connection.

What survives what (``synchronous``, from config):
- ``full`` (the default): the WAL is fsynced at each commit, so an answered
  write survives a process crash and a power loss.
- ``normal``: a commit reaches the OS but is fsynced only at checkpoints; it
  survives a process crash (kill -9), and a power loss may lose the last
  commits (never the database's consistency).

A commit that fails (a full disk) is not dropped: its batch is kept in
the writer and tried again every ``RETRY_INTERVAL``, ahead of later
writes, until it commits.  Meanwhile ``failure`` says why, the API
refuses new work, and answers that waited fail with ``StoreUnavailable``;
their writes land with the batch.  Only a crash (or a stop) while it fails
loses the writes not yet committed, and those were never answered as done.
If the writer process dies, the server starts another and sends it again
what was not committed (every statement is idempotent: an
insert-or-replace, an update to given values, a delete).

The schema is versioned (``PRAGMA user_version``) and migrated forward at
open; a database from a newer edgedispatch is refused, with the versions.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import contextlib
import json
import logging
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from edgedispatch.errors import StoreUnavailable
from edgedispatch.store.link import WriterLink

log = logging.getLogger("edgedispatch.store")

FILENAME = "edgedispatch.db"
#: Each migration takes the schema from the version before it to its own.
MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        "CREATE TABLE kv (namespace TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,"
        " PRIMARY KEY (namespace, key))",
        "CREATE TABLE rooms (tenant TEXT NOT NULL, name TEXT NOT NULL, record BLOB NOT NULL,"
        " PRIMARY KEY (tenant, name))",
        "CREATE TABLE dispatches (id TEXT PRIMARY KEY, seq INTEGER NOT NULL, record BLOB NOT NULL)",
        # A job's record is written once; its changes go to columns.
        "CREATE TABLE jobs (id TEXT PRIMARY KEY, seq INTEGER NOT NULL, record BLOB NOT NULL,"
        " deadline_ns INTEGER NOT NULL, state INTEGER NOT NULL, worker_id TEXT NOT NULL,"
        " reason INTEGER NOT NULL, updated_ns INTEGER NOT NULL)",
    ),
    # Dispatches and jobs keyed by their sequence number (the rowid), not by
    # their random text ids: a row goes at the end of its table's b-tree
    # instead of a random place in a second index, which halved the
    # writer's cost per dispatch (the journal finds a row's number by id).
    2: (
        "CREATE TABLE dispatches_v2 (seq INTEGER PRIMARY KEY, id TEXT NOT NULL,"
        " record BLOB NOT NULL)",
        "INSERT INTO dispatches_v2 (seq, id, record) SELECT seq, id, record FROM dispatches",
        "DROP TABLE dispatches",
        "ALTER TABLE dispatches_v2 RENAME TO dispatches",
        "CREATE TABLE jobs_v2 (seq INTEGER PRIMARY KEY, id TEXT NOT NULL, record BLOB NOT NULL,"
        " deadline_ns INTEGER NOT NULL, state INTEGER NOT NULL, worker_id TEXT NOT NULL,"
        " reason INTEGER NOT NULL, updated_ns INTEGER NOT NULL)",
        "INSERT INTO jobs_v2 SELECT seq, id, record, deadline_ns, state, worker_id, reason,"
        " updated_ns FROM jobs",
        "DROP TABLE jobs",
        "ALTER TABLE jobs_v2 RENAME TO jobs",
    ),
}
SCHEMA_VERSION = max(MIGRATIONS)
SYNCHRONOUS = {"full": "FULL", "normal": "NORMAL"}
#: Seconds between attempts to commit a batch that failed (a full disk).
RETRY_INTERVAL = 0.5
#: Upper bounds (seconds) of the commit time buckets (``/metrics``).
COMMIT_BOUNDS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0)

#: Seconds ``close`` waits for the writer to commit the last writes and end.
CLOSE_TIMEOUT = 30.0

_Op = tuple[str, Sequence[Any]]
#: What waits for a commit: called with None, or why it failed.
Committed = Callable[[StoreUnavailable | None], None]


#: How what waited is called: ``_call``, or on the loop while closing.
Callback = Callable[[Committed, StoreUnavailable | None], None]


def _call(fn: Committed, error: StoreUnavailable | None) -> None:
    """One waiter's callback; its error is its own (logged), not the
    others' nor the writer link's."""
    try:
        fn(error)
    except Exception:
        log.exception("a callback waiting for the store failed")


def open_database(path: Path, synchronous: str = "full") -> sqlite3.Connection:
    """Open (creating or migrating) the database at ``path``."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={SYNCHRONOUS[synchronous]}")
        db.execute("PRAGMA busy_timeout=5000")
        migrate(db)
    except BaseException:
        db.close()
        raise
    return db


def migrate(db: sqlite3.Connection) -> int:
    """Bring the schema to ``SCHEMA_VERSION``; returns the version found."""
    found = int(db.execute("PRAGMA user_version").fetchone()[0])
    if found > SCHEMA_VERSION:
        raise StoreUnavailable(
            f"the store was written by a newer edgedispatch (schema {found}; this one "
            f"knows up to {SCHEMA_VERSION}): upgrade, or restore a backup"
        )
    for version in range(found + 1, SCHEMA_VERSION + 1):
        db.execute("BEGIN IMMEDIATE")
        try:
            for statement in MIGRATIONS[version]:
                db.execute(statement)
            db.execute(f"PRAGMA user_version={version}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        log.info("store schema migrated to version %d", version)
    return found


class SqliteStore:
    """The server's store (``store.Store`` for key-value namespaces, plus
    the domain's tables), with its writer process (``store.link``)."""

    def __init__(self, directory: str | Path, synchronous: str = "full") -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / FILENAME
        self.synchronous = synchronous
        self._db = open_database(self.path, synchronous)
        # This pass's writes, and what waits for them to commit (each
        # called with None, or the error if the commit failed).
        self._outbox: list[_Op] = []
        self._callbacks: list[Committed] = []
        self._handing_over = False
        #: Passes handed over so far.
        self.handovers = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._link: WriterLink | None = None
        #: What waits, by the pass that ends with it.
        self._waiting: collections.deque[tuple[int, list[Committed]]] = collections.deque()
        #: The last pass committed (every one before it is too).
        self._committed_through = 0
        #: key -> the pass of the write ``mark`` named (``after_commit``).
        self._marks: dict[str, int] = {}
        self.failure: str = ""  #: why the last commit failed ("" when none)
        self.commits = 0
        #: How long commits took: counts per bucket of COMMIT_BOUNDS (the last
        #: is longer), and their sum in seconds (``/metrics``).
        self.commit_counts = [0] * (len(COMMIT_BOUNDS) + 1)
        self.commit_seconds = 0.0
        self.pending = 0  #: statements queued and not yet committed
        self.written = 0  #: statements queued since start (a caller's "did I write?")
        self._closed = False
        self._barrier: asyncio.Future[None] | None = None
        self._migrate_json()

    # Reads (start-up, before the writer runs) ---------------------------

    def load(self, namespace: str) -> dict[str, Any]:
        rows = self._db.execute("SELECT key, value FROM kv WHERE namespace = ?", (namespace,))
        return {key: json.loads(value) for key, value in rows}

    def rows(self, sql: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        return list(self._db.execute(sql, tuple(params)))

    # Writes ----------------------------------------------------------------

    def put(self, namespace: str, key: str, value: Any) -> None:
        self.write(
            "INSERT OR REPLACE INTO kv (namespace, key, value) VALUES (?, ?, ?)",
            (namespace, key, json.dumps(value, sort_keys=True)),
        )

    def delete(self, namespace: str, key: str) -> None:
        self.write("DELETE FROM kv WHERE namespace = ? AND key = ?", (namespace, key))

    @property
    def deferred(self) -> bool:
        """Writes wait in the outbox until the pass ends (the writer runs)."""
        return self._loop is not None and not self._closed

    @property
    def sends(self) -> int:
        """Frames sent to the writer so far: a row queued since the last
        one is still this process's, and may still change."""
        return self._link.sends if self._link is not None else 0

    @property
    def writer_pid(self) -> int:
        """The writer process's pid (0 when none runs)."""
        return self._link.pid if self._link is not None else 0

    def write(self, sql: str, params: Sequence[Any]) -> None:
        """Queue a statement; it commits with the writer's next batch.
        Before the writer runs (start-up), it runs at once; after ``close``
        it is dropped (the shutdown's own changes are not kept)."""
        if self._closed:
            return
        if self._loop is None:
            self._db.execute(sql, params)
            return
        self.pending += 1
        self.written += 1
        self._outbox.append((sql, params))
        if not self._handing_over:
            self._hand_over_soon()

    def when_committed(self, fn: Committed) -> None:
        """Call ``fn`` on the loop once what is queued by the end of this
        pass is committed (with None), or its commit failed (with the
        error): a callback rather than a future or a task, so that an
        answer that waits for its commit costs one list entry.

        While the store is failing it fails at once (never within this
        call): what was queued stays queued behind the failed batch, and
        commits when that one does.  Once closed, it fails: what is
        written now is not kept, so nothing may be answered as durable."""
        if self._closed or self.failure:
            asyncio.get_running_loop().call_soon(fn, self.unavailable())
        elif self._loop is None:
            asyncio.get_running_loop().call_soon(fn, None)
        else:
            self._callbacks.append(fn)
            if not self._handing_over:
                self._hand_over_soon()

    def after_commit(self, fn: Callable[[], None], key: str = "") -> None:
        """Call ``fn`` on the loop once what is queued by the end of this
        pass is committed, or its commit failed (what waits on it must not
        wait for ever; ``failure`` says why, and the writes are retried).
        Never once the store is closed: those writes are not kept (a job
        assigned during the shutdown must not start, since after the
        restart it is still queued).

        With the ``key`` of a write ``mark`` named, only that write's pass
        is waited for (at once, within this call, if it is committed)."""
        if self._closed:
            return
        target = self._marks.pop(key, 0) if key else 0
        if not target or self.failure or target > self.handovers:  # none, or this pass's
            self.when_committed(lambda _: fn())
        elif target <= self._committed_through:
            fn()
        else:
            self._wait_for(target, lambda _: fn())

    def mark(self, key: str) -> None:
        """Name the pass of the write just queued: ``after_commit(fn, key)``
        waits for it alone, not for what this pass writes later."""
        if self._loop is not None and not self._closed:
            self._marks[key] = self.handovers + 1  # this pass's number, once handed over

    def unmark(self, key: str) -> None:
        self._marks.pop(key, None)

    def _wait_for(self, target: int, fn: Committed) -> None:
        """``fn`` waits for pass ``target``, handed over and not committed."""
        waiting = self._waiting
        for i, (number, callbacks) in enumerate(waiting):
            if number == target:
                callbacks.append(fn)
                return
            if number > target:
                waiting.insert(i, (target, [fn]))
                return
        waiting.append((target, [fn]))

    def flushed(self) -> asyncio.Future[None]:
        """A future for ``when_committed``, shared by the calls of one pass."""
        barrier = self._barrier
        if barrier is not None:
            return barrier
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._closed:
            fut.cancel()
            return fut

        def settle(error: StoreUnavailable | None) -> None:
            if fut.done():
                return
            if error is None:
                fut.set_result(None)
            else:
                fut.set_exception(error)

        self.when_committed(settle)
        if self._loop is not None and not self.failure:
            self._barrier = fut  # until the pass ends
        return fut

    def unavailable(self) -> StoreUnavailable:
        """The error of a call refused or failed while the store is failing."""
        return StoreUnavailable(
            f"the store could not commit: {self.failure}; the server takes no new work"
            " until it can (what it already took is kept, and retried)"
        )

    def _hand_over_soon(self) -> None:
        assert self._loop is not None
        self._handing_over = True
        self._loop.call_soon(self._hand_over)

    def _hand_over(self) -> None:
        """At the end of a pass: its writes go to the writer (``link``
        paces them), and what waits on them waits for that commit (a write
        made after ``when_committed`` in the same pass is one its answer
        must wait for too)."""
        self._handing_over = False
        ops, callbacks = self._outbox, self._callbacks
        self._barrier = None
        if not ops and not callbacks:
            return
        self.handovers += 1
        self._outbox, self._callbacks = [], []
        link = self._link
        if not ops and (link is None or link.idle):
            for fn in callbacks:  # nothing written is waiting
                _call(fn, None)
            return
        if callbacks:
            self._waiting.append((self.handovers, callbacks))
        if link is not None:
            link.add(self.handovers, ops)
        # else: the writer died; it gets this pass when the next one starts

    # The writer process -----------------------------------------------------

    @contextlib.contextmanager
    def recovering(self) -> Iterator[None]:
        """The writes made while the state is put back, before the writer
        starts: one transaction (one fsync, not one per row), committed
        before the server listens."""
        if self._loop is not None:
            raise RuntimeError("recovery writes come before the writer starts")
        self._db.execute("BEGIN")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Hand writes to a writer process from now on."""
        self._loop = loop
        self._link = WriterLink(self.path, self.synchronous, loop, self._on_ack, self._lost)
        self._link.spawn()

    def _on_ack(
        self, through: int, error: str, took: float, done: int, call: Callback = _call
    ) -> None:
        """The writer committed (or failed to commit) every pass up to
        ``through``; ``call`` calls what waited for them."""
        self.commit_counts[bisect.bisect_left(COMMIT_BOUNDS, took)] += 1
        self.commit_seconds += took
        self.pending -= done
        self.commits += 1 if done else 0
        self.failure = error
        if not error:
            self._committed_through = max(self._committed_through, through)
        # A failure fails every answer waiting, including those of passes
        # not sent yet: none of them can be told its write is durable.
        failed = self.unavailable() if error else None
        self._settle(self.handovers if error else through, failed, call)

    def _settle(self, through: int, error: StoreUnavailable | None, call: Callback = _call) -> None:
        waiting = self._waiting
        while waiting and waiting[0][0] <= through:
            for fn in waiting.popleft()[1]:
                call(fn, error)

    def _lost(self, code: int | None) -> None:
        """The writer process ended: answers waiting fail, and a new one
        starts (after RETRY_INTERVAL) with what was not committed."""
        if self._closed:
            return
        self.failure = f"the store's writer process exited (status {code})"
        log.error("%s; starting another, which commits the %d writes pending",
                  self.failure, self.pending)  # fmt: skip
        self._settle(self.handovers, self.unavailable())
        assert self._loop is not None
        self._loop.call_later(RETRY_INTERVAL, self._respawn)

    def _respawn(self) -> None:
        link = self._link
        if self._closed or link is None or link.pid:
            return
        link.spawn()
        if link.idle:
            self.failure = ""  # nothing to wait for: taking work again

    def close(self) -> None:
        """Commit what is queued, stop the writer and close the database."""
        if self._closed:
            return
        self._closed = True
        link = self._link
        if link is not None:
            self._hand_over()
            link.close(self._closing_ack, CLOSE_TIMEOUT)
        self._db.close()

    def _closing_ack(self, through: int, error: str, took: float, done: int) -> None:
        self._on_ack(through, error, took, done, self._call_soon)

    def _call_soon(self, fn: Committed, error: StoreUnavailable | None) -> None:
        """What waited is called on the loop, if it still runs: not from
        within ``close``."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon(fn, error)

    # Operations -------------------------------------------------------------

    def backup(self, target: str | Path) -> None:
        """An online copy (SQLite's backup API), consistent while serving."""
        out = sqlite3.connect(target)
        try:
            src = sqlite3.connect(self.path)
            try:
                src.backup(out)
            finally:
                src.close()
        finally:
            out.close()

    def check(self) -> list[str]:
        """SQLite's integrity check: [] when the database is sound."""
        src = sqlite3.connect(self.path)
        try:
            found = [str(row[0]) for row in src.execute("PRAGMA integrity_check")]
        except sqlite3.DatabaseError as exc:  # too damaged to check
            return [str(exc)]
        finally:
            src.close()
        return [] if found == ["ok"] else found

    def _migrate_json(self) -> None:
        """Agent definitions kept as JSON files by older versions move in,
        once (the file is renamed, not deleted)."""
        for path in sorted(self.dir.glob("*.json")):
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                log.warning("not migrating %s: %s", path, exc)
                continue
            if not isinstance(data, dict):
                continue
            namespace = path.stem
            self._db.execute("BEGIN IMMEDIATE")
            for key, value in data.items():
                self._db.execute(
                    "INSERT OR IGNORE INTO kv (namespace, key, value) VALUES (?, ?, ?)",
                    (namespace, key, json.dumps(value, sort_keys=True)),
                )
            self._db.execute("COMMIT")
            path.rename(path.with_suffix(".json.migrated"))
            log.info("moved %d %s entries from %s into the store", len(data), namespace, path)
