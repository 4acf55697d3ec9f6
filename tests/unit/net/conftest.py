"""Adapters on an in-memory transport, under both event loops."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest
import uvloop

T = TypeVar("T")
Runner = Callable[[Coroutine[Any, Any, T]], T]


@pytest.fixture(params=["uvloop", "asyncio"])
def run(request: pytest.FixtureRequest) -> Runner[Any]:
    """Run a coroutine to its end on the loop of this parameter."""
    kind: str = request.param

    def runner(coro: Coroutine[Any, Any, T]) -> T:
        if kind == "uvloop":
            return uvloop.run(coro)
        return asyncio.run(coro)

    return runner
