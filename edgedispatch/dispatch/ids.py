"""LiveKit-style ids: a type prefix and 12 random characters (``AJ_ZD2Vy8yj7Fc4``)."""

from __future__ import annotations

import os

_ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"  # base57, as LiveKit
# One random byte -> one character.  256 is not a multiple of 57, so the
# first 28 characters are a little likelier (5/256 against 4/256): harmless
# for ids (~70 bits each), and a byte table is ~20x faster than secrets.choice.
_TABLE = bytes(ord(_ALPHABET[i % len(_ALPHABET)]) for i in range(256))

ROOM = "RM_"
DISPATCH = "AD_"
JOB = "AJ_"
WORKER = "AW_"
NODE = "ND_"
PARTICIPANT = "PA_"
TRACK = "TR_"


_pool = b""


def new(prefix: str) -> str:
    global _pool
    if len(_pool) < 12:
        _pool = os.urandom(12 * 512)  # one system call per 512 ids
    chunk, _pool = _pool[:12], _pool[12:]
    return prefix + chunk.translate(_TABLE).decode("ascii")
