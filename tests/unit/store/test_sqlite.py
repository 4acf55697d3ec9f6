"""The embedded SQLite store: schema versions, group commit through the
writer process, failures, backups, and the move from JSON files."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from edgedispatch.errors import StoreUnavailable
from edgedispatch.store import sqlite
from edgedispatch.store.commit import MAX_FRAME, STOP, Committer
from edgedispatch.store.journal import _INSERT_JOB, _UPDATE_JOB
from edgedispatch.store.sqlite import FILENAME, SCHEMA_VERSION, SqliteStore
from edgedispatch.store.writer import Writer
from edgedispatch.wire.frames import FrameReader, frame


def test_a_new_store_is_at_the_current_schema_and_reopens(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path)
    store.put("agents", "t/a", {"name": "a"})
    store.close()
    db = sqlite3.connect(tmp_path / FILENAME)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()
    again = SqliteStore(tmp_path)
    assert again.load("agents") == {"t/a": {"name": "a"}}
    again.close()


def test_a_store_from_a_newer_version_is_refused_with_both_versions(tmp_path: Path) -> None:
    SqliteStore(tmp_path).close()
    db = sqlite3.connect(tmp_path / FILENAME)
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(StoreUnavailable, match=f"schema {SCHEMA_VERSION + 1}.*{SCHEMA_VERSION}"):
        SqliteStore(tmp_path)


def test_agent_definitions_in_json_files_move_in_once(tmp_path: Path) -> None:
    (tmp_path / "agents.json").write_text(json.dumps({"t/a": {"name": "a"}}))
    store = SqliteStore(tmp_path)
    assert store.load("agents") == {"t/a": {"name": "a"}}
    store.close()
    assert not (tmp_path / "agents.json").exists()
    assert (tmp_path / "agents.json.migrated").exists()  # kept, renamed
    again = SqliteStore(tmp_path)
    assert again.load("agents") == {"t/a": {"name": "a"}}
    again.close()


def test_writes_commit_in_batches_and_answers_wait_for_them(tmp_path: Path) -> None:
    async def main() -> tuple[int, int]:
        store = SqliteStore(tmp_path)
        store.start(asyncio.get_running_loop())
        for i in range(200):
            store.put("ns", f"k{i}", i)
        assert store.pending == 200
        await store.flushed()
        assert store.pending == 0
        # Another connection sees every write: they are committed.
        db = sqlite3.connect(tmp_path / FILENAME)
        (count,) = db.execute("SELECT COUNT(*) FROM kv").fetchone()
        db.close()
        commits = store.commits
        store.close()
        return count, commits

    count, commits = asyncio.run(main())
    assert count == 200
    assert commits < 200  # grouped: one transaction takes many writes


class _FullDisk:
    """A connection with every COMMIT failing as on a full disk while
    ``full`` is set."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.full = True

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        if sql == "COMMIT" and self.full:
            raise sqlite3.OperationalError("database or disk is full")
        return self.db.execute(sql, *args)

    def executemany(self, sql: str, rows: Any) -> sqlite3.Cursor:
        return self.db.executemany(sql, rows)

    def close(self) -> None:
        self.db.close()


def _committed(path: Path) -> dict[str, str]:
    db = sqlite3.connect(path / FILENAME)
    try:
        return dict(db.execute("SELECT key, value FROM kv"))
    finally:
        db.close()


_PUT = "INSERT OR REPLACE INTO kv (namespace, key, value) VALUES (?, ?, ?)"


def test_a_failed_batch_is_kept_and_commits_in_order_when_the_disk_has_room(
    tmp_path: Path,
) -> None:
    disk = _FullDisk(sqlite.open_database(tmp_path / FILENAME))
    committer = Committer(disk)  # type: ignore[arg-type]
    error, done = committer.commit([(_PUT, ("ns", "a", "1")), (_PUT, ("ns", "b", "1"))])
    assert "disk is full" in error and done == 0
    # Written while failing: kept behind the failed batch.
    assert committer.commit([(_PUT, ("ns", "a", "2"))]) == (error, 0)
    assert committer.commit([])[1] == 0  # a retry, still failing
    assert _committed(tmp_path) == {}
    disk.full = False
    assert committer.commit([]) == ("", 3)
    # Nothing dropped, and in order: the later "a" won.
    assert _committed(tmp_path) == {"a": "2", "b": "1"}
    assert committer.commit([(_PUT, ("ns", "c", "3"))]) == ("", 1)
    disk.close()


def test_a_write_that_can_never_commit_is_dropped_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A statement no retry can fix (a constraint; a value SQLite cannot
    bind) would otherwise keep its batch, and every later write, failing
    for ever: the server would take no more work.  It alone is dropped,
    with an error in the log; the rest of its batch commits, in order."""
    db = sqlite.open_database(tmp_path / FILENAME)
    committer = Committer(db)
    duplicate = "INSERT INTO kv (namespace, key, value) VALUES (?, ?, ?)"
    batch = [
        (_PUT, ("ns", "a", "1")),
        (duplicate, ("ns", "a", "again")),  # the primary key: never
        (_PUT, ("ns", "b", "1")),
        (_PUT, ("ns", "c", {"not": "bindable"})),  # never either
        (_PUT, ("ns", "a", "2")),
    ]
    assert committer.commit(batch) == ("", 3)  # type: ignore[arg-type]
    assert _committed(tmp_path) == {"a": "2", "b": "1"}
    assert committer.kept == []
    assert committer.commit([(_PUT, ("ns", "d", "1"))]) == ("", 1)
    dropped = [r.getMessage() for r in caplog.records if "can never commit" in r.getMessage()]
    assert len(dropped) == 2 and "UNIQUE constraint failed" in dropped[0]
    db.close()


def test_the_writer_says_which_passes_failed_and_which_committed(tmp_path: Path) -> None:
    """The writer process's loop, run here on a thread, with the test as
    the server at the other end of its socket pair."""
    disk = _FullDisk(sqlite.open_database(tmp_path / FILENAME))
    server, end = socket.socketpair()
    writer = Writer(end, Committer(disk))  # type: ignore[arg-type]
    thread = threading.Thread(target=writer.run, daemon=True)
    thread.start()
    acks = FrameReader(MAX_FRAME)
    got: list[list[Any]] = []
    server.settimeout(10)

    def ack() -> list[Any]:
        while not got:
            got.extend(acks.feed(server.recv(4096)))
        return got.pop(0)

    server.sendall(frame([1, [[0, _PUT]], [[0, ["ns", "a", "1"]]]]))
    through, error, _, done = ack()
    assert (through, done) == (1, 0) and "disk is full" in error
    server.sendall(frame([2, [], [[0, ["ns", "b", "1"]]]]))
    while ack()[0] != 2:  # retries of pass 1 may come first
        pass
    disk.full = False
    while True:  # the next retry commits both passes
        through, error, _, done = ack()
        if not error:
            break
    assert (through, done) == (2, 2)
    assert _committed(tmp_path) == {"a": "1", "b": "1"}
    # A pass with no writes (an answer waiting for earlier ones) is answered
    # too: an answer waiting on it would otherwise wait for ever.
    server.sendall(frame([3, [], []]))
    assert ack()[::3] == [3, 0]
    server.sendall(frame([STOP]))
    thread.join(5)
    assert not thread.is_alive()  # it stops when told to
    end.close()
    server.close()
    disk.close()


def test_a_writer_that_dies_is_replaced_and_commits_what_was_sent_to_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite, "RETRY_INTERVAL", 0.05)

    async def main() -> None:
        store = SqliteStore(tmp_path)
        store.start(asyncio.get_running_loop())
        store.put("ns", "a", 1)
        await store.flushed()
        first = store.writer_pid
        os.kill(first, signal.SIGSTOP)  # it takes nothing more...
        store.put("ns", "b", 2)
        waiting = store.flushed()
        await asyncio.sleep(0.05)  # ...but "b" was sent to it
        os.kill(first, signal.SIGKILL)
        with pytest.raises(StoreUnavailable, match="writer process exited"):
            await waiting
        assert store.failure  # new work is refused meanwhile
        for _ in range(200):
            if not store.failure:
                break
            await asyncio.sleep(0.01)
        assert not store.failure and store.pending == 0
        assert store.writer_pid not in (0, first)
        assert _committed(tmp_path) == {"a": "1", "b": "2"}
        store.put("ns", "c", 3)
        await store.flushed()
        # Nothing written in this pass, nothing waiting: answered at once.
        await asyncio.wait_for(store.flushed(), 1)
        store.close()
        assert _committed(tmp_path) == {"a": "1", "b": "2", "c": "3"}

    asyncio.run(main())


def test_backup_is_a_sound_copy_and_check_finds_a_damaged_file(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "data")
    for i in range(100):
        store.put("ns", f"k{i}", "x" * 500)
    store.backup(tmp_path / "copy.db")
    assert store.check() == []
    store.close()
    copy = SqliteStore.__new__(SqliteStore)
    copy.path = tmp_path / "copy.db"
    assert copy.check() == []
    db = sqlite3.connect(tmp_path / "copy.db")
    assert db.execute("SELECT COUNT(*) FROM kv").fetchone()[0] == 100
    db.close()
    raw = bytearray((tmp_path / "copy.db").read_bytes())
    raw[4096 : 3 * 4096] = b"\xff" * (2 * 4096)  # scribble over two pages
    (tmp_path / "copy.db").write_bytes(bytes(raw))
    assert copy.check() != []


def test_writes_after_close_are_dropped(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path)
    store.close()
    store.put("ns", "k", 1)  # the shutdown's own changes: not an error
    again = SqliteStore(tmp_path)
    assert again.load("ns") == {}
    again.close()


def test_an_answer_waits_for_every_write_of_its_loop_pass(tmp_path: Path) -> None:
    """Calls handled in one pass share one commit barrier: a call that wrote
    after the first one asked for it is committed too, before any answer."""

    async def main() -> int:
        store = SqliteStore(tmp_path)
        store.start(asyncio.get_running_loop())
        store.put("ns", "first", 1)
        barrier = store.flushed()
        time.sleep(0.05)  # the writer is free to take what is queued so far
        store.put("ns", "second", 2)
        assert store.flushed() is barrier  # the second call shares it
        await barrier
        db = sqlite3.connect(tmp_path / FILENAME)
        (count,) = db.execute("SELECT COUNT(*) FROM kv").fetchone()
        db.close()
        store.close()
        return int(count)

    assert asyncio.run(main()) == 2


def test_after_commit_runs_once_the_writes_before_it_are_committed(tmp_path: Path) -> None:
    async def main() -> list[int]:
        store = SqliteStore(tmp_path)
        store.start(asyncio.get_running_loop())
        seen: list[int] = []

        def count() -> None:
            db = sqlite3.connect(tmp_path / FILENAME)
            seen.append(db.execute("SELECT COUNT(*) FROM kv").fetchone()[0])
            db.close()

        store.put("ns", "k", 1)
        store.after_commit(count)
        assert not seen  # not before the commit
        await asyncio.sleep(0.2)
        store.write("INSERT INTO no_such_table VALUES (?)", (1,))
        store.after_commit(lambda: seen.append(-1))  # a failed commit still calls it
        await asyncio.sleep(0.2)
        store.close()
        return seen

    assert asyncio.run(main()) == [1, -1]


def test_a_batch_keeps_each_tables_order_across_interleaved_tables(tmp_path: Path) -> None:
    room = "INSERT OR REPLACE INTO rooms (tenant, name, record) VALUES (?, ?, ?)"

    async def main() -> None:
        store = SqliteStore(tmp_path)
        store.start(asyncio.get_running_loop())
        # One pass, one batch: a key set, deleted and set again, between
        # writes to another table (the writer groups statements by table).
        store.put("ns", "a", 1)
        store.write(room, ("t", "r1", b"{}"))
        store.delete("ns", "a")
        store.write("DELETE FROM rooms WHERE tenant = ? AND name = ?", ("t", "r1"))
        store.put("ns", "a", 2)
        store.write(room, ("t", "r1", b"{}"))
        store.delete("ns", "b")
        await store.flushed()
        store.close()

    asyncio.run(main())
    assert _committed(tmp_path) == {"a": "2"}
    db = sqlite3.connect(tmp_path / FILENAME)
    assert db.execute("SELECT name FROM rooms").fetchall() == [("r1",)]
    db.close()


def test_a_batch_runs_jobs_verb_by_verb_and_each_job_ends_as_written(tmp_path: Path) -> None:
    def job(i: int) -> tuple[object, ...]:
        return (i, f"AJ_{i}", b"{}", 0, 0, "", 0, 0)

    async def main() -> None:
        store = SqliteStore(tmp_path)
        store.start(asyncio.get_running_loop())
        store.write(_INSERT_JOB, job(1))
        store.write(_UPDATE_JOB, (2, "w1", 0, 1, 1))
        store.write(_INSERT_JOB, job(2))
        store.write("DELETE FROM jobs WHERE seq = ?", (1,))
        store.write(_INSERT_JOB, job(3))
        store.write(_UPDATE_JOB, (2, "w3", 0, 1, 3))
        store.write(_UPDATE_JOB, (4, "w3", 0, 2, 3))
        await store.flushed()
        store.close()

    asyncio.run(main())
    db = sqlite3.connect(tmp_path / FILENAME)
    rows = db.execute("SELECT id, state, worker_id FROM jobs ORDER BY seq").fetchall()
    db.close()
    assert rows == [("AJ_2", 0, ""), ("AJ_3", 4, "w3")]


def test_nothing_is_answered_as_durable_once_the_store_is_closed(tmp_path: Path) -> None:
    """The server stops: a job assigned now (its write dropped) must not be
    sent to its worker, or it would run again after the restart."""

    async def main() -> tuple[list[str], object]:
        store = SqliteStore(tmp_path)
        store.start(asyncio.get_running_loop())
        called: list[str] = []
        store.put("ns", "before", 1)
        store.after_commit(lambda: called.append("before"))  # committed by close
        store.close()
        store.put("ns", "after", 2)  # dropped
        store.after_commit(lambda: called.append("after"))
        errors: list[object] = []
        store.when_committed(errors.append)
        await asyncio.sleep(0.1)
        return called, errors[0]

    called, error = asyncio.run(main())
    assert called == ["before"]
    assert isinstance(error, StoreUnavailable)  # an answer waiting now says so
    assert _committed(tmp_path) == {"before": "1"}


def test_passes_made_while_a_commit_is_under_way_go_to_the_writer_together(
    tmp_path: Path,
) -> None:
    """Group commit is paced by the server: with a frame at the writer, the
    passes that follow wait and then travel as one frame, one transaction;
    each pass's answer still comes once its own writes are committed."""

    async def main() -> tuple[int, int, list[int]]:
        store = SqliteStore(tmp_path)
        store.start(asyncio.get_running_loop())
        answered: list[int] = []
        # The writer is held, as a slow disk would hold it, with the first
        # pass's frame sent to it.
        os.kill(store.writer_pid, signal.SIGSTOP)
        try:
            for i in range(20):
                store.put("ns", f"k{i}", i)

                def answer(error: StoreUnavailable | None, i: int = i) -> None:
                    answered.append(i if error is None else -1)

                store.when_committed(answer)
                await asyncio.sleep(0)  # the pass ends: its writes are handed over
            sends = store.sends
            assert answered == []  # nothing is durable yet
        finally:
            os.kill(store.writer_pid, signal.SIGCONT)
        for _ in range(200):
            if len(answered) == 20:
                break
            await asyncio.sleep(0.01)
        final_sends = store.sends
        store.close()
        return sends, final_sends, answered

    sends, final_sends, answered = asyncio.run(main())
    assert sends == 1  # only the first pass went while the writer was busy
    assert final_sends == 2  # the other 19 passes: one frame
    assert answered == list(range(20))
    assert len(_committed(tmp_path)) == 20


def test_after_commit_with_a_key_waits_for_the_marked_write_alone(tmp_path: Path) -> None:
    """An assignment waits for the write of its job's offer, not for what
    later passes wrote: those may still be on their way to the writer."""

    async def main() -> tuple[dict[str, str], list[str]]:
        store = SqliteStore(tmp_path)
        store.start(asyncio.get_running_loop())
        seen: dict[str, str] = {}
        calls: list[str] = []
        os.kill(store.writer_pid, signal.SIGSTOP)
        try:
            store.put("ns", "offer", 1)
            store.mark("job-1")
            await asyncio.sleep(0)  # sent: the writer holds it
            store.put("ns", "later", 2)  # waits in the server behind it
            store.after_commit(lambda: seen.update(_committed(tmp_path)), "job-1")
            await asyncio.sleep(0)
            assert not seen
        finally:
            os.kill(store.writer_pid, signal.SIGCONT)
        for _ in range(200):
            if seen:
                break
            await asyncio.sleep(0.01)
        await store.flushed()
        # Once the marked write is committed, a wait for it is over at once.
        store.mark("job-2")
        store.put("ns", "two", 3)
        await store.flushed()
        store.after_commit(lambda: calls.append("at once"), "job-2")
        store.after_commit(lambda: calls.append("no mark"), "job-3")  # this pass's
        assert calls == ["at once"]
        await store.flushed()
        store.close()
        return seen, calls

    seen, calls = asyncio.run(main())
    assert set(seen) == {"offer"}  # the later pass's write was not yet committed
    assert calls == ["at once", "no mark"]
