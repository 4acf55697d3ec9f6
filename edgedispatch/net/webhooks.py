"""Delivers webhooks: each POST in its own task, a few at a time, retried
with doubling waits, never on the path of whatever caused the event.

A tiny HTTP/1.1 client on asyncio streams (one request per connection):
the server has no HTTP client dependency otherwise, and a webhook needs
only a status line back.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections import deque
from urllib.parse import urlsplit

from edgedispatch.wire.webhooks import CONTENT_TYPE

log = logging.getLogger("edgedispatch.webhooks")

#: Deliveries in flight at once; the rest wait in line.
CONCURRENCY = 8
#: Events waiting beyond this are dropped, oldest first (a dead endpoint
#: must not grow the server's memory without bound).
MAX_WAITING = 10_000
FIRST_RETRY = 1.0


class WebhookSender:
    def __init__(self, attempts: int, timeout: float) -> None:
        self._attempts = attempts
        self._timeout = timeout
        self._loop = asyncio.get_running_loop()
        self._waiting: deque[tuple[str, bytes, str, int]] = deque(maxlen=MAX_WAITING)
        self._tasks: set[asyncio.Task[None]] = set()
        self._timers: set[asyncio.TimerHandle] = set()
        self.delivered = 0
        self.dropped = 0
        self._closed = False

    def post(self, url: str, body: bytes, token: str) -> None:
        self._enqueue(url, body, token, 1)

    def _enqueue(self, url: str, body: bytes, token: str, attempt: int) -> None:
        if self._closed:
            return
        if len(self._waiting) == self._waiting.maxlen:
            self.dropped += 1
        self._waiting.append((url, body, token, attempt))
        self._pump()

    def _pump(self) -> None:
        while self._waiting and len(self._tasks) < CONCURRENCY:
            task = self._loop.create_task(self._deliver(*self._waiting.popleft()))
            self._tasks.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._pump()

    async def _deliver(self, url: str, body: bytes, token: str, attempt: int) -> None:
        try:
            status = await asyncio.wait_for(self._post(url, body, token), self._timeout)
            if 200 <= status < 300:
                self.delivered += 1
                return
            why = f"HTTP {status}"
        except (TimeoutError, OSError, ValueError) as exc:
            why = f"{type(exc).__name__}: {exc}"
        if attempt >= self._attempts:
            self.dropped += 1
            log.warning("webhook to %s dropped after %d tries: %s", url, attempt, why)
            return
        delay = FIRST_RETRY * 2 ** (attempt - 1)
        log.info("webhook to %s failed (%s); retrying in %.0f s", url, why, delay)
        handle = self._loop.call_later(delay, self._retry, url, body, token, attempt + 1)
        self._timers.add(handle)

    def _retry(self, url: str, body: bytes, token: str, attempt: int) -> None:
        self._timers = {t for t in self._timers if not t.cancelled() and t.when() > 0}
        self._enqueue(url, body, token, attempt)

    async def _post(self, url: str, body: bytes, token: str) -> int:
        parts = urlsplit(url)
        secure = parts.scheme == "https"
        host = parts.hostname or ""
        port = parts.port or (443 if secure else 80)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        context = ssl.create_default_context() if secure else None
        reader, writer = await asyncio.open_connection(host, port, ssl=context)
        try:
            head = (
                f"POST {path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
                f"Content-Type: {CONTENT_TYPE}\r\nAuthorization: {token}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode("latin-1") + body)
            await writer.drain()
            status_line = await reader.readline()
            bits = status_line.split()
            if len(bits) < 2 or not bits[1].isdigit():
                raise ValueError(f"not an HTTP response: {status_line[:60]!r}")
            return int(bits[1])
        finally:
            writer.close()

    async def close(self) -> None:
        """Stop: what is still waiting is dropped (logged)."""
        self._closed = True
        for handle in self._timers:
            handle.cancel()
        left = len(self._waiting) + len(self._timers)
        self._waiting.clear()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=1)
        if left:
            log.warning("%d webhooks not delivered at shutdown", left)
