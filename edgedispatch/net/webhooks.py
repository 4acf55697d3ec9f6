"""Delivers webhooks: in order per URL, retried with doubling waits, never
on the path of whatever caused the event.

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

#: Events waiting per URL beyond this are dropped, oldest first (a dead
#: endpoint must not grow the server's memory without bound).
MAX_WAITING = 10_000
FIRST_RETRY = 1.0


class WebhookSender:
    """One delivery task per URL, in the order the events happened (a
    receiver sees room_started before participant_joined); a failing
    endpoint holds back only its own events while it is retried."""

    def __init__(self, attempts: int, timeout: float) -> None:
        self._attempts = attempts
        self._timeout = timeout
        self._loop = asyncio.get_running_loop()
        self._waiting: dict[str, deque[tuple[bytes, str]]] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.delivered = 0
        self.dropped = 0
        self._closed = False

    def post(self, url: str, body: bytes, token: str) -> None:
        if self._closed:
            return
        line = self._waiting.setdefault(url, deque(maxlen=MAX_WAITING))
        if len(line) == line.maxlen:
            self.dropped += 1
        line.append((body, token))
        if url not in self._tasks:
            self._tasks[url] = self._loop.create_task(self._drain(url))

    async def _drain(self, url: str) -> None:
        line = self._waiting[url]
        try:
            while line:
                body, token = line[0]
                await self._deliver(url, body, token)
                line.popleft()
        finally:
            del self._tasks[url]

    async def _deliver(self, url: str, body: bytes, token: str) -> None:
        for attempt in range(1, self._attempts + 1):
            try:
                status = await asyncio.wait_for(self._post(url, body, token), self._timeout)
                if 200 <= status < 300:
                    self.delivered += 1
                    return
                why = f"HTTP {status}"
            except (TimeoutError, OSError, ValueError) as exc:
                why = f"{type(exc).__name__}: {exc}"
            if attempt < self._attempts:
                delay = FIRST_RETRY * 2 ** (attempt - 1)
                log.info("webhook to %s failed (%s); retrying in %.0f s", url, why, delay)
                await asyncio.sleep(delay)
        self.dropped += 1
        log.warning("webhook to %s dropped after %d tries: %s", url, self._attempts, why)

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
        left = sum(len(line) for line in self._waiting.values())
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=1)
        if left:
            log.warning("%d webhooks not delivered at shutdown", left)
