"""Where the server keeps state that must survive a restart.

One small interface, so that later the rest of the server's state can move
behind it too.  ``FileStore`` keeps one JSON document per namespace in the
data directory, replaced atomically (write, fsync, rename).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
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


class FileStore:
    def __init__(self, directory: str | Path) -> None:
        self._dir = Path(directory)
        self._dir.mkdir(parents=True, exist_ok=True)

    def _path(self, namespace: str) -> Path:
        return self._dir / f"{namespace}.json"

    def load(self, namespace: str) -> dict[str, Any]:
        try:
            data = json.loads(self._path(namespace).read_text())
        except FileNotFoundError:
            return {}
        return data if isinstance(data, dict) else {}

    def _write(self, namespace: str, data: dict[str, Any]) -> None:
        path = self._path(namespace)
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def put(self, namespace: str, key: str, value: Any) -> None:
        data = self.load(namespace)
        data[key] = value
        self._write(namespace, data)

    def delete(self, namespace: str, key: str) -> None:
        data = self.load(namespace)
        if data.pop(key, None) is not None:
            self._write(namespace, data)
