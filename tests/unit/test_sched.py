"""Short scheduler slices (``edgedispatch.sched``): asked for by the
calling thread only, never passed on to what it starts."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from edgedispatch import config, sched
from edgedispatch.errors import ConfigError


def run(code: str) -> str:
    """``code`` in a fresh interpreter (a slice set here would stay with
    pytest's thread)."""
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_asking_whether_the_kernel_takes_slices_leaves_the_callers_alone() -> None:
    before = sched.current_slice_ns()
    sched.supported()
    assert sched.current_slice_ns() == before


NO_SLICES = "this kernel gives no custom slices (Linux 6.12 and later do)"


def test_the_thread_gets_its_slice_and_keeps_its_nice_and_nothing_it_starts_inherits_it() -> None:
    if not sched.supported():
        pytest.skip(NO_SLICES)
    out = run(
        """
    import os, subprocess, sys, threading
    from edgedispatch import sched
    os.nice(3)
    default = sched.slice_of(os.getpid())
    assert sched.request_slice(0.0005)
    nice = os.getpriority(os.PRIO_PROCESS, 0)
    print(sched.slice_of(os.getpid()), sched.current_slice_ns(), nice)
    seen = []
    t = threading.Thread(target=lambda: seen.append(
        sched.slice_of(os.getpid(), threading.get_native_id())))
    t.start(); t.join()
    child = subprocess.run([sys.executable, "-c",
                            "import os; from edgedispatch import sched; "
                            "print(sched.slice_of(os.getpid()))"],
                           capture_output=True, text=True).stdout
    print(seen[0] == default, int(child) == default, default != 500000)
    """
    )
    assert out.splitlines() == ["500000 500000 3", "True True True"]


def test_zero_asks_for_the_kernels_default_again() -> None:
    if not sched.supported():
        pytest.skip(NO_SLICES)
    out = run(
        """
        from edgedispatch import sched
        sched.request_slice(0.002)
        print(sched.current_slice_ns(), sched.request_slice(0), sched.current_slice_ns() != 2000000)
        """
    )
    assert out == "2000000 True True"


def test_elsewhere_it_says_no_and_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("edgedispatch.sched.platform.machine", lambda: "riscv64")
    assert sched.request_slice(0.0005) is False
    assert sched.current_slice_ns() == 0


@pytest.mark.parametrize("value", ["", "0", "soon"])
def test_helpers_ask_for_nothing_unless_told_a_number(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv(sched.SLICE_ENV, value)
    assert sched.request_slice_from_env() is False


@pytest.mark.parametrize("value", [-1.0, 0.00005, 0.2])
def test_a_slice_the_kernel_would_not_take_is_refused_at_start(value: float) -> None:
    keys = {"k": "s" * 32}
    cfg = config.Config(server=config.ServerConfig(sched_slice=value), keys=keys)
    with pytest.raises(ConfigError, match=r"server\.sched_slice: must be 0 .* or 0\.0001-0\.1"):
        config.validate(cfg)
    config.validate(config.Config(server=config.ServerConfig(sched_slice=0.0), keys=keys))
