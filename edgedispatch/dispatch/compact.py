"""Dicts that give their memory back once they have shrunk.

CPython never shrinks a dict's table when keys are deleted: a dict that
held 100,000 rooms keeps its ~5 MB table after they are all gone, for as
long as the dict lives (the server's, for months).  ``shrink`` rebuilds such
a dict in place (so that bound methods and other references to it stay
good) once it is much larger than its entries need.
"""

from __future__ import annotations

import sys
from typing import Any

#: A freshly built dict takes ~36 bytes per entry (tuple or str keys);
#: rebuild one that takes this many per entry or more, i.e. about 7 times
#: what its entries need, so that a dict whose size goes up and down by a
#: few times is never rebuilt over and over.
_SPARSE_BYTES_PER_ENTRY = 256
#: ...and not a small one at all: an empty dict grown to ~100 entries.
_SMALL_BYTES = 4096


def shrink(d: dict[Any, Any]) -> None:
    """Call after deleting from ``d``: rebuilds it if it is far too large.

    It looks only when ``len(d)`` is a power of two (or 0), so that a run of
    deletions pays one O(1) test each and a rebuild of n entries comes
    after at least n deletions: amortized O(1) per deletion."""
    n = len(d)
    if n & (n - 1):
        return
    if sys.getsizeof(d) <= _SPARSE_BYTES_PER_ENTRY * n + _SMALL_BYTES:
        return
    if n == 0:
        d.clear()  # back to the shared empty table
        return
    entries = dict(d)  # sized for n (a dict with holes is copied entry by entry)
    d.clear()
    d.update(entries)
