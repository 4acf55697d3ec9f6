"""The event/action ring: the compiled ring against the pure-Python twin,
and the C header under two real threads."""

from __future__ import annotations

import math
import shutil
import subprocess
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgedispatch import _core

ROOT = Path(__file__).resolve().parents[2]
RINGS = [pytest.param(_core.ring_py, id="python")]
if _core.ring_c is not None:
    RINGS.append(pytest.param(_core.ring_c, id="compiled"))

i32 = st.integers(-(2**31), 2**31 - 1)
record = st.tuples(
    i32,
    i32,
    i32,
    i32,
    st.floats(allow_nan=False),
    st.floats(allow_nan=False),
    st.integers(-(2**63), 2**63 - 1),
)


@pytest.fixture(params=RINGS)
def ring_mod(request: pytest.FixtureRequest) -> ModuleType:
    mod: ModuleType = request.param
    return mod


def test_capacity_must_be_a_power_of_two(ring_mod: ModuleType) -> None:
    for bad in (0, 1, 3, 1000):
        with pytest.raises(ValueError):
            ring_mod.Ring(bad)
    assert ring_mod.Ring(8).capacity == 8


def test_fifo_bounded_and_clear(ring_mod: ModuleType) -> None:
    ring = ring_mod.Ring(4)
    assert ring.pop() is None
    for i in range(4):
        assert ring.push(1, i, -1, 0, 0.5, float(i), 0)
    assert not ring.push(1, 9, -1, 0, 0.0, 0.0, 0)  # full: refused, nothing lost
    assert len(ring) == 4
    assert [ring.pop()[1] for _ in range(2)] == [0, 1]  # type: ignore[index]
    rec = ring_mod.Record()
    assert ring.pop_into(rec) and rec.job == 2 and rec.now == 2.0
    ring.clear()
    assert len(ring) == 0 and not ring.pop_into(rec)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.one_of(record, st.none()), max_size=200))
def test_rings_agree(ops: list[tuple[int, int, int, int, float, float, int] | None]) -> None:
    """Pushes (a record) and pops (None) give the same results on every ring."""
    outputs = []
    for mod in (_core.ring_py, _core.ring_c):
        if mod is None:
            continue
        ring, out = mod.Ring(16), []
        for op in ops:
            out.append(ring.pop() if op is None else ring.push(*op))
        out.append(len(ring))
        outputs.append(out)
    assert all(o == outputs[0] for o in outputs)


def test_records_round_trip_all_fields(ring_mod: ModuleType) -> None:
    ring = ring_mod.Ring(2)
    rec = ring_mod.Record(5, 6, 7, 8, math.inf, -0.25, -(2**62))
    assert ring.push_record(rec)
    out = ring_mod.Record()
    assert ring.pop_into(out)
    assert out.astuple() == (5, 6, 7, 8, math.inf, -0.25, -(2**62))


def _cc() -> str | None:
    return shutil.which("cc") or shutil.which("gcc")


@pytest.mark.skipif(_cc() is None, reason="no C compiler")
@pytest.mark.parametrize("sanitize", [False, True], ids=["plain", "tsan"])
def test_c_ring_two_threads(tmp_path: Path, sanitize: bool) -> None:
    cc = _cc()
    assert cc is not None
    exe = tmp_path / "ring_threads"
    flags = ["-O2", "-std=c11", "-pthread", "-Wall", "-Werror"]
    if sanitize:
        flags += ["-fsanitize=thread", "-g"]
    build = subprocess.run(
        [
            cc,
            *flags,
            f"-I{ROOT / '_core/include'}",
            str(ROOT / "tests/c/test_ring_threads.c"),
            "-o",
            str(exe),
        ],
        capture_output=True,
        text=True,
    )
    if sanitize and build.returncode != 0:
        pytest.skip(f"this compiler cannot build with ThreadSanitizer: {build.stderr[:200]}")
    assert build.returncode == 0, build.stderr
    count = "200000" if sanitize else "2000000"
    result = subprocess.run([str(exe), count], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"ok {count}"
    assert "WARNING: ThreadSanitizer" not in result.stderr
