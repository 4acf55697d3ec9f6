"""LiveKit-style ids: a type prefix and 12 random characters (``AJ_ZD2Vy8yj7Fc4``)."""

from __future__ import annotations

import secrets

_ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"  # base57, as LiveKit

ROOM = "RM_"
DISPATCH = "AD_"
JOB = "AJ_"
WORKER = "AW_"
NODE = "ND_"


def new(prefix: str) -> str:
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(12))
