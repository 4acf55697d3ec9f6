"""Fixtures shared by the suite.

``impl`` runs a test once per scheduler implementation: the pure-Python
reference and, when built, the compiled core.  Set
``EDGEDISPATCH_REQUIRE_COMPILED=1`` (CI does) to fail instead of skipping
when the compiled core is missing.
"""

from __future__ import annotations

import os
from types import ModuleType

import pytest

from edgedispatch import _core

REQUIRE_COMPILED = os.environ.get("EDGEDISPATCH_REQUIRE_COMPILED", "") not in ("", "0")


def _impl_params() -> list[object]:
    params: list[object] = [pytest.param(_core.scheduler_py, id="python")]
    if _core.scheduler_c is not None:
        params.append(pytest.param(_core.scheduler_c, id="compiled"))
    elif not REQUIRE_COMPILED:
        params.append(
            pytest.param(None, id="compiled", marks=pytest.mark.skip("compiled core not built"))
        )
    else:  # pragma: no cover - CI guard
        raise RuntimeError("EDGEDISPATCH_REQUIRE_COMPILED is set but the core is not built")
    return params


def pytest_report_header() -> str:
    core = "compiled" if _core.COMPILED else "pure Python"
    return f"edgedispatch: the {core} scheduling core serves (EDGEDISPATCH_NO_EXTENSIONS)"


@pytest.fixture(params=_impl_params())
def impl(request: pytest.FixtureRequest) -> ModuleType:
    module: ModuleType = request.param
    return module
