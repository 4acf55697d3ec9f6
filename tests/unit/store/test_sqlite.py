"""The embedded SQLite store: schema versions, group commit through the
writer thread, failures, backups, and the move from JSON files."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from pathlib import Path

import pytest

from edgedispatch.errors import StoreUnavailable
from edgedispatch.store.sqlite import FILENAME, SCHEMA_VERSION, SqliteStore


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


def test_a_failed_commit_fails_the_answers_waiting_for_it(tmp_path: Path) -> None:
    async def main() -> None:
        store = SqliteStore(tmp_path)
        store.start(asyncio.get_running_loop())
        store.write("INSERT INTO no_such_table VALUES (?)", (1,))
        with pytest.raises(StoreUnavailable, match="could not commit"):
            await store.flushed()
        assert store.failure
        store.put("ns", "k", 1)  # the next batch commits again
        await store.flushed()
        assert not store.failure
        store.close()

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
