"""The one ``call_at`` that drives a sans-IO object's time (aioquic's way).

The domain says when it next needs ``on_timer`` (``next_deadline``, and
through ``on_deadline`` whenever that changes); this arms a single loop
timer for it and calls ``on_timer(now)`` with the loop's clock when due.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class DeadlineTimer:
    __slots__ = ("_loop", "_on_timer", "_handle", "_at")

    def __init__(self, loop: asyncio.AbstractEventLoop, on_timer: Callable[[float], None]) -> None:
        self._loop = loop
        self._on_timer = on_timer
        self._handle: asyncio.TimerHandle | None = None
        self._at: float | None = None

    def arm(self, deadline: float | None) -> None:
        """Fire at ``deadline`` (a time in the past: at the next loop turn),
        instead of whenever it was armed for; None disarms."""
        if deadline == self._at:
            return
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._at = deadline
        if deadline is not None:
            self._handle = self._loop.call_at(deadline, self._fire)

    def cancel(self) -> None:
        self.arm(None)

    def _fire(self) -> None:
        self._handle = self._at = None
        self._on_timer(self._loop.time())
