"""How the store's writer commits: batches of statements as transactions,
a failed batch kept and tried again, and the frames the server and its
writer process exchange (``store.writer``).

Nothing here reads a clock or touches a socket: the writer process owns the
timing and the pipe, and the tests drive ``Committer`` with a database that
fails on demand.

Frames (``wire.frames``: a 4-byte length and a msgpack list):
- server -> writer, one per pass of the event loop: ``[pass, new, ops]``,
  where ``new`` defines statements seen for the first time (``[index,
  sql]``) and ``ops`` are ``[index, params]``; ``[-1]`` asks it to stop.
- writer -> server, one per commit attempt: ``[through, error, seconds,
  statements]``: every pass up to ``through`` committed (``error`` "") or
  failed with ``error`` (kept, and tried again with what follows).
"""

from __future__ import annotations

import functools
import logging
import re
import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

log = logging.getLogger("edgedispatch.store")

#: A frame larger than this means a broken peer (a pass's writes are a few
#: hundred bytes each; the largest bursts make a few megabytes).
MAX_FRAME = 256 * 1024 * 1024
STOP = -1

_Op = tuple[str, Sequence[Any]]


_TABLE = re.compile(r"\b(?:INTO|FROM|UPDATE)\s+(\w+)")
#: Tables whose rows are made once under a fresh id (random dispatch and job
#: ids) and never made again: a row's insert comes before its updates and
#: its delete, whatever else, so a batch may run them verb by verb.
_MADE_ONCE = frozenset({"dispatches", "jobs"})
_VERB_ORDER = {"INSERT": 0, "UPDATE": 1, "DELETE": 2}


@functools.cache
def _table(sql: str) -> str:
    found = _TABLE.search(sql)
    return found.group(1) if found else ""


@functools.cache
def _verb_rank(sql: str) -> int:
    """Where a statement's verb runs in a batch (the statements are a few
    constant strings: read once each, not once per row)."""
    return _VERB_ORDER.get(sql.split(None, 1)[0], 3)


def _verb_order(op: _Op) -> int:
    return _verb_rank(op[0])


def by_table(batch: list[_Op]) -> Iterable[list[_Op]]:
    """The batch's statements, table by table, each table's in their order.
    The tables are independent (no triggers, no foreign keys) and the batch
    commits as one transaction, so only each table's own order matters; and
    grouped, a burst's room, dispatch and job inserts (which alternate as
    they come) form three runs instead of one statement each, and its job
    inserts and updates two."""
    tables: dict[str, list[_Op]] = {}
    for op in batch:
        table = _table(op[0])
        ops = tables.get(table)
        if ops is None:
            tables[table] = [op]
        else:
            ops.append(op)
    for table in _MADE_ONCE.intersection(tables):
        # Stable: each verb's statements keep their order.
        tables[table].sort(key=_verb_order)
    return tables.values()


#: What one statement can never do, however often it is tried (a
#: constraint, a value SQLite cannot bind): the statement is dropped, with
#: an error in the log, rather than keep every later write from committing.
#: Anything else (a full disk, an I/O error) is the database's, and passes.
_NEVER = (sqlite3.IntegrityError, sqlite3.InterfaceError, sqlite3.ProgrammingError,
          sqlite3.DataError)  # fmt: skip


class Committer:
    """Commits batches on ``db``.  A batch that fails (a full disk) is kept
    and goes first, in order, with the next one, until it commits: its
    writes were applied in memory (a job's end, say), and dropping them
    would make the disk disagree with what clients were told.  A statement
    that can never commit (``_NEVER``) is the exception: it alone is
    dropped, so that one bad row cannot stop the server taking work."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.kept: list[_Op] = []

    def commit(self, batch: list[_Op]) -> tuple[str, int]:
        """(why it failed, or "", statements committed)."""
        retrying = bool(self.kept)
        if retrying:
            batch = self.kept + batch
        if not batch:
            return "", 0
        error, dropped = self._run(batch, quiet=retrying)
        if error:
            self.kept = batch
            return error, 0
        if retrying:
            log.warning("store commits again: %d kept writes committed", len(batch))
        self.kept = []
        return "", len(batch) - dropped

    def _run(self, batch: list[_Op], quiet: bool) -> tuple[str, int]:
        """(why the batch failed, or "", statements dropped)."""
        db = self.db
        try:
            db.execute("BEGIN")
            for ops in by_table(batch):
                # Runs of the same statement go as one executemany: far
                # fewer round trips through Python per row.
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
        except _NEVER:
            self._roll_back()
            return self._run_each(batch, quiet)
        except sqlite3.Error as exc:
            if not quiet:  # once per failure, not at each retry
                log.error("store commit of %d writes failed (kept, retried): %s", len(batch), exc)
            self._roll_back()
            return str(exc) or type(exc).__name__, 0
        return "", 0

    def _run_each(self, batch: list[_Op], quiet: bool) -> tuple[str, int]:
        """The batch again, one statement at a time, without those that
        can never commit (SQLite undoes a failed statement alone)."""
        db = self.db
        dropped = 0
        try:
            db.execute("BEGIN")
            for sql, params in batch:
                try:
                    db.execute(sql, params)
                except _NEVER as exc:
                    dropped += 1
                    log.error("store dropped a write that can never commit: %s %s: %s",
                              sql[:80], repr(params)[:200], exc)  # fmt: skip
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            if not quiet:
                log.error("store commit of %d writes failed (kept, retried): %s", len(batch), exc)
            self._roll_back()
            return str(exc) or type(exc).__name__, 0
        return "", dropped

    def _roll_back(self) -> None:
        try:
            self.db.execute("ROLLBACK")
        except sqlite3.Error:
            pass


class Statements:
    """The writer's side of the statement table: each SQL text is sent once
    and then named by its index (the same string object each time, so that
    runs of it group by identity)."""

    def __init__(self) -> None:
        self._sql: dict[int, str] = {}

    def ops(self, new: list[list[Any]], ops: list[list[Any]]) -> list[_Op]:
        for index, sql in new:
            self._sql[int(index)] = str(sql)
        table = self._sql
        return [(table[index], params) for index, params in ops]
