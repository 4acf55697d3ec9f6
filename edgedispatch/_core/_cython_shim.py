"""The ``cython`` module of the pure-Python core when Cython is not installed.

Cython is a build requirement only: a wheel carries the compiled core, and
its pure-Python twin (``scheduler_py``, ``tables_py``: the reference, and
what ``EDGEDISPATCH_NO_EXTENSIONS=1`` selects) must import without Cython.
Those modules do, as SQLAlchemy's and fontTools' pure-Python-mode modules do::

    try:
        import cython
    except ModuleNotFoundError:
        from edgedispatch._core import _cython_shim as cython

The ``import cython`` has to stay literal: it is how Cython's compiler
recognises ``cython.int`` annotations and ``cython.compiled`` in the module it
compiles, and in the compiled module that import never runs.  Uncompiled,
those modules read only ``cython.compiled``: every ``cython.X`` type is an
annotation, never evaluated (``from __future__ import annotations``), and the
``cython.cimports`` imports sit under ``if cython.compiled:``.  So this shim
is one constant rather than a copy of Cython's ``Shadow`` module.  A use of
anything else at run time (a ``@cython.cfunc`` decorator, ``cython.cast``)
would fail here: ``tests/unit/test_packaging.py`` runs the pure core with
Cython hidden, and ``./dev test``'s wheel stage runs an installed copy.
"""

from __future__ import annotations

compiled = False
