"""The native pool's decisions, without processes and without sleeping:
its state tables (``pool_states``).

The process-level behaviour is tests/unit/test_native_pool.py's."""

from __future__ import annotations

import itertools

import pytest

from edgedispatch.errors import InternalError
from edgedispatch.runtime.pool_states import ChildState, PoolState, move, settled

# -- the state tables --------------------------------------------------------------

P, C = PoolState, ChildState

# Written out here, not read from the module: these are the moves the pool's
# users rely on (a dead zygote is replaced; a broken pool can only close...).
POOL_MOVES = {
    (P.NEW, P.RUNNING),  # start() succeeded
    (P.NEW, P.CLOSED),  # start() failed, or close() before start()
    (P.RUNNING, P.RESTARTING),  # the zygote died
    (P.RUNNING, P.CLOSED),
    (P.RESTARTING, P.RUNNING),  # the new zygote loaded the agent
    (P.RESTARTING, P.BROKEN),  # it did not
    (P.RESTARTING, P.CLOSED),
    (P.BROKEN, P.CLOSED),
}
CHILD_MOVES = {
    (C.FORKED, C.CONNECTED),  # its control connection said Hello
    (C.FORKED, C.FINALIZED),  # died before it connected
    (C.CONNECTED, C.READY),  # prewarmed
    (C.CONNECTED, C.FINALIZED),  # prewarm failed, or retired
    (C.READY, C.BUSY),  # given a job
    (C.READY, C.FINALIZED),  # died idle (and its job, if any, gets another child)
    (C.BUSY, C.FINALIZED),  # the job is over
}


def _all_pairs(states: type[PoolState] | type[ChildState]) -> list[tuple[object, object]]:
    return list(itertools.product(states, states))


@pytest.mark.parametrize(
    ("old", "new"),
    _all_pairs(PoolState) + _all_pairs(ChildState),
    ids=lambda s: s.name,
)
def test_a_move_is_allowed_exactly_when_the_table_has_it(old: P | C, new: P | C) -> None:
    legal = (old, new) in (POOL_MOVES if isinstance(old, PoolState) else CHILD_MOVES)
    if legal:
        assert move(old, new, "pool x") is new
    else:
        with pytest.raises(InternalError) as err:
            move(old, new, "pool x")
        # Whoever reads the log learns where, from what and to what.
        assert str(err.value) == f"pool x: illegal transition {old.name} -> {new.name}"


def test_closed_and_finalized_are_the_end() -> None:
    for state in (P.CLOSED, C.FINALIZED):
        for other in type(state):
            with pytest.raises(InternalError):
                move(state, other, "x")


def test_a_pool_states_value_is_what_a_refused_job_is_told() -> None:
    # run_job on a pool that is not running: "native pool 'x' is broken".
    assert [s.value for s in PoolState] == ["new", "running", "restarting", "broken", "closed"]


def _end(state: ChildState, events: list[str], *, orphan: bool = False) -> list[bool]:
    """Whether the child is settled after each of ``events`` arrives."""
    exit_known, ctl, out = orphan, state is not C.FORKED, True
    seen = []
    for event in events:
        if event == "Exited":
            exit_known = True
        elif event == "ctl closed":
            ctl = False
        elif event == "out closed":
            out = False
        seen.append(settled(state, exit_known=exit_known, connections_open=ctl or out))
    return seen


@pytest.mark.parametrize("state", [C.CONNECTED, C.READY, C.BUSY])
def test_a_child_is_settled_by_the_last_of_its_exit_and_its_two_connections(
    state: ChildState,
) -> None:
    # Every arrival order: settled exactly when the last one is in, so the
    # job's last output line and traceback are read before it ends.
    for order in itertools.permutations(["Exited", "ctl closed", "out closed"]):
        assert _end(state, list(order)) == [False, False, True], order


def test_a_child_reaped_before_it_connected_waits_for_the_grace_timer() -> None:
    # Its control connection may still be in the accept queue.
    assert _end(C.FORKED, ["out closed", "Exited"]) == [False, False]
    assert _end(C.FORKED, ["Exited", "out closed"]) == [False, False]


def test_an_orphan_needs_no_exit_status() -> None:
    # Its zygote is gone: nobody will say it was reaped.
    assert _end(C.BUSY, ["ctl closed", "out closed"], orphan=True) == [False, True]
    assert _end(C.FORKED, ["out closed"], orphan=True) == [False]
