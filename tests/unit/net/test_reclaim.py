"""The server gives memory back once, after a mass deletion has ended, and
does nothing (a few microseconds) otherwise."""

from __future__ import annotations

from edgedispatch.net import reclaim


def test_memory_is_given_back_once_after_a_mass_deletion_ends() -> None:
    reclaimer = reclaim.Reclaimer()
    assert not reclaimer.check()  # nothing freed: nothing done
    objects = [(i, str(i)) for i in range(2 * reclaim.BLOCKS_FREED)]
    assert not reclaimer.check()  # growing
    del objects
    # The freeing has just happened: wait for a look that finds it over, so
    # that a reclaim does not come in the middle of a mass deletion.
    assert not reclaimer.check()
    assert reclaimer.check()
    assert reclaimer.reclaims == 1
    assert not reclaimer.check()  # once
