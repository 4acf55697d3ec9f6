"""Short scheduler slices for edgedispatch's own latency-bound threads.

The server's event loop (a CreateDispatch is ~0.3 ms of work), the media
workers' loops (a 20 ms send clock) and the store's writer wake often and
run briefly.  Beside them on an appliance run things that run long: the
agents and their speech models, other media workers, a load generator.
Linux's EEVDF scheduler (6.6 and later) picks the runnable task with the
earliest virtual deadline, which is its start plus its requested *slice*;
from Linux 6.12 a task may ask for a shorter slice than the default
(0.75 ms times 1 + log2 of the cores, up to 3 ms), without any
privilege, and a woken task with a shorter slice may preempt the one
running.  A short slice takes no more CPU than before (the share still
follows the weights, i.e. nice): its wake-ups are served sooner, and it
is preempted sooner when it runs long.

``bench sip --media --dispatch-rate`` measures what it does for dispatch
beside phone calls (the README has the runs).

The slice is asked for with ``SCHED_FLAG_RESET_ON_FORK``: the threads
and processes the thread starts (executor threads, job processes, tenant
code) get the kernel's default again.  On older kernels the call succeeds
and changes nothing; ``request_slice`` reads the slice back to tell.

Standard library only: the helper processes call it before anything else.
"""

from __future__ import annotations

import ctypes
import os
import platform
import struct
import threading

#: The environment variable that tells the helper processes (media
#: workers, the store's writer) the slice the server asked for, in seconds.
SLICE_ENV = "EDGEDISPATCH_SCHED_SLICE"

_SCHED_FLAG_RESET_ON_FORK = 0x01
_SCHED_OTHER = 0
#: struct sched_attr, first version (56 bytes): size, policy, flags, nice,
#: priority, runtime (the slice, for SCHED_OTHER), deadline, period,
#: util_min, util_max.
_ATTR = struct.Struct("IIQiIQQQII")
#: (sched_setattr, sched_getattr) by architecture.
_SYSCALLS = {"x86_64": (314, 315), "aarch64": (274, 275)}


def request_slice(seconds: float) -> bool:
    """Ask for ``seconds`` slices for the calling thread (0: the kernel's
    default).  True when the kernel now gives this thread that slice; False
    where it cannot (a kernel before 6.12, another architecture, a seccomp
    filter), which leaves the thread as it was."""
    numbers = _SYSCALLS.get(platform.machine())
    if numbers is None:
        return False
    slice_ns = int(round(seconds * 1e9))
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        # SCHED_OTHER takes its nice from the attribute: the thread's own,
        # so that only the slice changes.
        nice = os.getpriority(os.PRIO_PROCESS, 0)
        attr = ctypes.create_string_buffer(
            _ATTR.pack(_ATTR.size, _SCHED_OTHER, _SCHED_FLAG_RESET_ON_FORK, nice, 0, slice_ns,
                       0, 0, 0, 0)
        )  # fmt: skip
        if libc.syscall(numbers[0], 0, attr, 0) != 0:
            return False
        return slice_ns == 0 or current_slice_ns() == slice_ns
    except (OSError, AttributeError):
        return False


def current_slice_ns() -> int:
    """The calling thread's requested slice in ns (0: the default, or a
    kernel that does not say)."""
    numbers = _SYSCALLS.get(platform.machine())
    if numbers is None:
        return 0
    libc = ctypes.CDLL(None, use_errno=True)
    out = ctypes.create_string_buffer(_ATTR.size)
    if libc.syscall(numbers[1], 0, out, _ATTR.size, 0) != 0:
        return 0
    return int(_ATTR.unpack(out.raw)[5])


def supported() -> bool:
    """Whether this kernel gives custom slices: asked in a thread of its
    own, which then ends (the caller's slice stays as it was)."""
    result: list[bool] = []
    probe = threading.Thread(target=lambda: result.append(request_slice(0.0005)))
    probe.start()
    probe.join()
    return result == [True]


def slice_of(pid: int, tid: int = 0) -> int | None:
    """The slice (ns) thread ``tid`` of process ``pid`` (its main thread
    by default) runs with, as /proc says (None where it does not)."""
    try:
        with open(f"/proc/{pid}/task/{tid or pid}/sched") as f:
            return next(int(line.split()[-1]) for line in f if line.startswith("se.slice"))
    except (OSError, StopIteration, ValueError):
        return None


def request_slice_from_env() -> bool:
    """In a helper process: the slice the server asked for (``SLICE_ENV``)."""
    try:
        seconds = float(os.environ.get(SLICE_ENV, "0") or 0)
    except ValueError:
        return False
    return seconds > 0 and request_slice(seconds)
