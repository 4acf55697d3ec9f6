"""The scheduling core, compiled or pure Python.

``COMPILED`` says which one was loaded.  Set ``EDGEDISPATCH_NO_EXTENSIONS=1``
to force the pure-Python reference; without it the compiled core is used, and
the pure one only if the extension modules were not built (``serve`` refuses
to run that way unless told to, see ``require_compiled``).
"""

from __future__ import annotations

import os
from types import ModuleType

from edgedispatch._core import ring_py, scheduler_py
from edgedispatch._core.codes import (
    ActionKind,
    EventKind,
    FailReason,
    JobState,
    JobStatus,
    RestartPolicy,
    WaitReason,
    WorkerStatus,
)

ring_c: ModuleType | None
scheduler_c: ModuleType | None
try:
    from edgedispatch._core import ring_c, scheduler_c
except ImportError:  # not built
    ring_c = scheduler_c = None

NO_EXTENSIONS = os.environ.get("EDGEDISPATCH_NO_EXTENSIONS", "") not in ("", "0")
BUILT = scheduler_c is not None

if BUILT and not NO_EXTENSIONS:
    assert ring_c is not None and scheduler_c is not None
    Ring = ring_c.Ring
    Record = ring_c.Record
    Scheduler = scheduler_c.Scheduler
    COMPILED = True
else:
    Ring = ring_py.Ring
    Record = ring_py.Record
    Scheduler = scheduler_py.Scheduler
    COMPILED = False


def implementations() -> dict[str, ModuleType]:
    """Every scheduler implementation available here, by name ("python",
    and "compiled" when the extensions are built)."""
    impls: dict[str, ModuleType] = {"python": scheduler_py}
    if scheduler_c is not None:
        impls["compiled"] = scheduler_c
    return impls


__all__ = [
    "COMPILED",
    "BUILT",
    "ActionKind",
    "EventKind",
    "FailReason",
    "JobState",
    "JobStatus",
    "Record",
    "RestartPolicy",
    "Ring",
    "Scheduler",
    "WaitReason",
    "WorkerStatus",
    "implementations",
]
