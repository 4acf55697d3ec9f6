"""``edgedispatch store``: the embedded store, offline or while serving.

- ``store backup FILE``: an online copy (SQLite's backup API), consistent
  even while the server writes;
- ``store check``: SQLite's integrity check (exit 1 if it finds damage).

Both find the store as the server does: ``--data-dir``, else the config's
``server.data_dir``, else ``$STATE_DIRECTORY``.
"""

from __future__ import annotations

import argparse
import os
import sys

from edgedispatch import config
from edgedispatch.errors import EdgeDispatchError
from edgedispatch.store.sqlite import FILENAME, SqliteStore


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    store = sub.add_parser("store", help="back up or check the embedded store")
    store_sub = store.add_subparsers(dest="store_command", required=True, metavar="ACTION")
    backup = store_sub.add_parser("backup", help="an online copy of the store")
    backup.add_argument("file", metavar="FILE", help="where to write the copy")
    check = store_sub.add_parser("check", help="run SQLite's integrity check")
    for p in (backup, check):
        p.add_argument("--config", metavar="FILE", help="TOML configuration file")
        p.add_argument("--data-dir", metavar="DIR", help="the server's data directory")
    backup.set_defaults(func=_backup)
    check.set_defaults(func=_check)


def _open(args: argparse.Namespace) -> SqliteStore | None:
    directory = args.data_dir
    if not directory:
        try:
            directory = config.load(args.config).server.data_dir
        except EdgeDispatchError as exc:
            print(f"edgedispatch: bad configuration: {exc}", file=sys.stderr)
            return None
        directory = directory or os.environ.get("STATE_DIRECTORY", "")
    if not directory or not os.path.exists(os.path.join(directory, FILENAME)):
        print(f"edgedispatch: no store in {directory or '(no data_dir set)'}", file=sys.stderr)
        return None
    try:
        return SqliteStore(directory)
    except EdgeDispatchError as exc:
        print(f"edgedispatch: {exc}", file=sys.stderr)
        return None


def _backup(args: argparse.Namespace) -> int:
    store = _open(args)
    if store is None:
        return 2
    try:
        store.backup(args.file)
    finally:
        store.close()
    print(f"backed up {store.path} to {args.file}")
    return 0


def _check(args: argparse.Namespace) -> int:
    store = _open(args)
    if store is None:
        return 2
    try:
        problems = store.check()
    finally:
        store.close()
    for line in problems:
        print(line)
    if not problems:
        print(f"{store.path}: ok")
    return 1 if problems else 0
