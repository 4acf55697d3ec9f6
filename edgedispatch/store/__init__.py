"""Where the server keeps state that must survive a restart.

``Store`` is the small key-value interface agent definitions use;
``sqlite.SqliteStore`` implements it and also keeps the domain's rooms,
dispatches and jobs (``journal``).  ``MemoryStore`` keeps nothing (no data
directory: ``--dev``).
"""

from __future__ import annotations

from typing import Any, Protocol


class Store(Protocol):
    def load(self, namespace: str) -> dict[str, Any]: ...

    def put(self, namespace: str, key: str, value: Any) -> None: ...

    def delete(self, namespace: str, key: str) -> None: ...


class MemoryStore:
    """Keeps nothing across restarts (no data directory configured)."""

    def __init__(self) -> None:
        self._data: dict[str, dict[str, Any]] = {}

    def load(self, namespace: str) -> dict[str, Any]:
        return dict(self._data.get(namespace, {}))

    def put(self, namespace: str, key: str, value: Any) -> None:
        self._data.setdefault(namespace, {})[key] = value

    def delete(self, namespace: str, key: str) -> None:
        self._data.get(namespace, {}).pop(key, None)
