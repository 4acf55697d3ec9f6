"""The embedded store: one SQLite database in the data directory.

Why SQLite: embedded, transactional, crash-safe in WAL mode, in the
standard library, with an online backup API and an integrity check; a
server on one box needs nothing more (ecosystem.md).

SQLite blocks, so every write goes through one writer thread: the event
loop queues statements (``write``) and, where a client must not get its
answer before the write is durable, waits for ``flushed()``.  The writer
takes everything queued so far as one transaction (group commit): one
fsync for all the requests of a burst.  Reads happen once, at start-up,
before the server listens (``load``, ``rows``).

What survives what (``synchronous``, from config):
- ``full`` (the default): the WAL is fsynced at each commit, so an answered
  write survives a process crash and a power loss.
- ``normal``: a commit reaches the OS but is fsynced only at checkpoints; it
  survives a process crash (kill -9), and a power loss may lose the last
  commits (never the database's consistency).

A commit that fails (a full disk) is not dropped: its batch is kept in
memory and tried again every ``RETRY_INTERVAL``, ahead of later writes,
until it commits.  Meanwhile ``failure`` says why, the API refuses new
work, and answers that waited fail with ``StoreUnavailable``; their writes
land with the batch.  Only a crash (or a stop) while it fails loses the
writes not yet committed, and those were never answered as done.

The schema is versioned (``PRAGMA user_version``) and migrated forward at
open; a database from a newer edgedispatch is refused, with the versions.
"""

from __future__ import annotations

import asyncio
import bisect
import functools
import json
import logging
import queue
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from edgedispatch.errors import StoreUnavailable

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
#: A commit starts at least this long after the one before it started.
#: Under load the writes of a few milliseconds then share one transaction
#: and one fsync, which are most of the store's cost (system time, a disk
#: flush, a wake-up of the loop); an answer waits at most this much longer.
#: Idle, the first write commits at once.
GROUP_WINDOW = 0.003
#: Upper bounds (seconds) of the commit time buckets (``/metrics``).
COMMIT_BOUNDS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0)

_Op = tuple[str, Sequence[Any]]
#: What one pass of the event loop hands the writer: its writes, in order,
#: and the barrier its answers wait on (if any asked).
_Pass = tuple[list[_Op], "asyncio.Future[None] | None"]


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


_TABLE = re.compile(r"\b(?:INTO|FROM|UPDATE)\s+(\w+)")
_tables: dict[str, str] = {}
#: Tables whose rows are made once under a fresh id (random dispatch and job
#: ids) and never made again: a row's insert comes before its updates and
#: its delete, whatever else, so a batch may run them verb by verb.
_MADE_ONCE = frozenset({"dispatches", "jobs"})
_VERB_ORDER = {"INSERT": 0, "UPDATE": 1, "DELETE": 2}


def _by_table(batch: list[_Op]) -> Iterable[list[_Op]]:
    """The batch's statements, table by table, each table's in their order.
    The tables are independent (no triggers, no foreign keys) and the batch
    commits as one transaction, so only each table's own order matters; and
    grouped, a burst's room, dispatch and job inserts (which alternate as
    they come) form three runs instead of one statement each, and its job
    inserts and updates two."""
    tables: dict[str, list[_Op]] = {}
    for op in batch:
        sql = op[0]
        table = _tables.get(sql)
        if table is None:
            found = _TABLE.search(sql)
            table = _tables[sql] = found.group(1) if found else ""
        ops = tables.get(table)
        if ops is None:
            tables[table] = [op]
        else:
            ops.append(op)
    for table in _MADE_ONCE.intersection(tables):
        # Stable: each verb's statements keep their order.
        tables[table].sort(key=_verb_order)
    return tables.values()


def _verb_order(op: _Op) -> int:
    return _verb_rank(op[0])


@functools.cache
def _verb_rank(sql: str) -> int:
    """Where a statement's verb runs in a batch (the statements are a few
    constant strings: read once each, not once per row)."""
    return _VERB_ORDER.get(sql.split(None, 1)[0], 3)


class SqliteStore:
    """The server's store (``store.Store`` for key-value namespaces, plus
    the domain's tables), with its writer thread."""

    def __init__(self, directory: str | Path, synchronous: str = "full") -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / FILENAME
        self._db = open_database(self.path, synchronous)
        self._queue: queue.SimpleQueue[_Pass | None] = queue.SimpleQueue()
        # This pass's writes, handed to the writer in one piece at its end:
        # one wake-up of the writer thread (and one GIL hand-off) per pass,
        # not per statement (each wake-up was a context switch and a fight
        # for the GIL with the loop).
        self._outbox: list[_Op] = []
        self._handing_over = False
        #: Passes handed to the writer so far: a write made since the last
        #: one is still in the outbox, and its parameters may still change.
        self.handovers = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.failure: str = ""  #: why the last commit failed ("" when none)
        self.commits = 0
        #: How long commits took: counts per bucket of COMMIT_BOUNDS (the last
        #: is longer), and their sum in seconds.  Written by the writer
        #: thread, read by /metrics (a count a scrape reads one commit
        #: early is fine).
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
        return self._thread is not None and not self._closed

    def write(self, sql: str, params: Sequence[Any]) -> None:
        """Queue a statement; it commits with the writer's next batch.
        Before the writer runs (start-up), it runs at once; after ``close``
        it is dropped (the shutdown's own changes are not kept)."""
        if self._closed:
            return
        if self._thread is None:
            self._db.execute(sql, params)
            return
        self.pending += 1
        self.written += 1
        self._outbox.append((sql, params))
        if not self._handing_over:
            self._hand_over_soon()

    def flushed(self) -> asyncio.Future[None]:
        """Resolves once everything queued before it, and in the rest of
        this pass of the event loop, is committed (or with
        ``StoreUnavailable`` if the commit failed: a full disk, say).  The
        calls of one pass of the event loop share one future: one wake-up
        of the loop for all the answers of a burst.

        While the store is failing it fails at once: what was queued stays
        queued behind the failed batch, and commits when that one does."""
        barrier = self._barrier
        if barrier is not None:
            return barrier
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        if self._closed:
            # Closed (the server is stopping): what is written now is not
            # kept, so nothing may be answered as durable.
            fut.cancel()
            return fut
        if self.failure:
            fut.set_exception(self.unavailable())
            return fut
        if self._thread is None:
            fut.set_result(None)
            return fut
        self._barrier = fut
        if not self._handing_over:
            self._hand_over_soon()
        return fut

    def when_committed(self, fn: Callable[[StoreUnavailable | None], None]) -> None:
        """Call ``fn`` on the loop once what is queued by the end of this
        pass is committed (with None), or its commit failed (with the
        error): a callback rather than a coroutine, so that an answer that
        waits for its commit costs no task."""

        def done(fut: asyncio.Future[None]) -> None:
            error = None if fut.cancelled() else fut.exception()
            if fut.cancelled() or (error is not None and not isinstance(error, StoreUnavailable)):
                error = self.unavailable()
            fn(error)

        self.flushed().add_done_callback(done)

    def after_commit(self, fn: Callable[[], None]) -> None:
        """Call ``fn`` on the loop once what is queued by the end of this
        pass is committed, or its commit failed (what waits on it must not
        wait for ever; ``failure`` says why, and the writes are retried).
        Never once the store is closed: those writes are not kept (a job
        assigned during the shutdown must not start, since after the
        restart it is still queued)."""

        def done(fut: asyncio.Future[None]) -> None:
            if not fut.cancelled():
                fut.exception()  # seen: not logged as never retrieved
                fn()

        self.flushed().add_done_callback(done)

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
        """At the end of a pass: its writes go to the writer, with the
        barrier after all of them (a write made after ``flushed()`` in the
        same pass is one its answer must wait for too)."""
        self._handing_over = False
        ops, barrier = self._outbox, self._barrier
        if ops or barrier is not None:
            self.handovers += 1
            self._outbox, self._barrier = [], None
            self._queue.put((ops, barrier))

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Hand writes to the writer thread from now on."""
        self._loop = loop
        self._thread = threading.Thread(target=self._run, name="store-writer", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Commit what is queued, stop the writer and close the database."""
        if self._closed:
            return
        self._closed = True
        if self._thread is not None:
            self._hand_over()
            self._queue.put(None)
            self._thread.join()
            self._thread = None
        self._db.close()

    def _run(self) -> None:
        db = self._db
        # A batch that failed is kept and tried again, ahead of what came
        # after it and in order, until it commits: its writes were applied
        # in memory (a job's end, say), and dropping them would make the
        # disk disagree with what clients were told (the job would run
        # again after a restart).
        kept: list[_Op] = []
        stop = False
        last = 0.0
        while not stop:
            # Busy: let more of the burst join the next commit.  Sleeping
            # before taking (not after a wake-up) keeps the loop's hand-overs
            # from waking this thread meanwhile: under load it never blocks
            # on the queue, so no hand-over switches the core over to it.
            wait = last + GROUP_WINDOW - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            batch, waiters, stop = self._take(RETRY_INTERVAL if kept else None)
            last = time.monotonic()
            if kept:
                batch = kept + batch
            error = self._commit(db, batch, quiet=bool(kept)) if batch else ""
            if batch:
                took = time.monotonic() - last
                self.commit_counts[bisect.bisect_left(COMMIT_BOUNDS, took)] += 1
                self.commit_seconds += took
            if error:
                kept = batch
                if stop:
                    log.error("store closed with %d writes it could not commit", len(batch))
            elif kept:
                log.warning("store commits again: %d kept writes committed", len(batch))
                kept = []
            self._resolve(waiters, error, 0 if error else len(batch))

    def _take(self, retry: float | None) -> tuple[list[_Op], list[asyncio.Future[None]], bool]:
        """What is queued: at least one item, else (while a failed batch
        waits) whatever comes within ``retry`` seconds."""
        batch: list[_Op] = []
        waiters: list[asyncio.Future[None]] = []
        deadline = None if retry is None else time.monotonic() + retry
        while True:
            try:
                if deadline is None:
                    item = (
                        self._queue.get() if not batch and not waiters else self._queue.get_nowait()
                    )
                else:
                    item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return batch, waiters, False
            if item is None:
                return batch, waiters, True
            ops, barrier = item
            batch += ops
            if barrier is not None:
                waiters.append(barrier)

    def _commit(self, db: sqlite3.Connection, batch: list[_Op], quiet: bool = False) -> str:
        try:
            db.execute("BEGIN")
            for ops in _by_table(batch):
                # Runs of the same statement go as one executemany: far
                # fewer round trips through Python (and the GIL) per row.
                start = 0
                while start < len(ops):
                    sql = ops[start][0]
                    end = start + 1
                    while end < len(ops) and ops[end][0] is sql:
                        end += 1
                    if end - start == 1:
                        db.execute(sql, ops[start][1])
                    else:
                        db.executemany(sql, [params for _, params in ops[start:end]])
                    start = end
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            if not quiet:  # once per failure, not at each retry
                log.error("store commit of %d writes failed (kept, retried): %s", len(batch), exc)
            try:
                db.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            return str(exc) or type(exc).__name__
        return ""

    def _resolve(self, waiters: list[asyncio.Future[None]], error: str, n: int) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return

        def done() -> None:
            self.pending -= n
            self.commits += 1 if n else 0
            self.failure = error
            for fut in waiters:
                if fut.done():
                    continue
                if error:
                    fut.set_exception(self.unavailable())
                else:
                    fut.set_result(None)

        try:
            loop.call_soon_threadsafe(done)
        except RuntimeError:  # the loop closed meanwhile
            pass

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
