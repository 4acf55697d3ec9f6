"""Extension modules and build switches only; metadata is in pyproject.toml.

Switches (environment):
  EDGEDISPATCH_NO_EXTENSIONS=1  build nothing: the pure-Python core is used
  EDGEDISPATCH_DEBUG=1          -O0 -g, Cython line tracing, bounds checks on
  EDGEDISPATCH_ANNOTATE=1       write Cython's HTML annotation next to sources
"""

import os

from setuptools import Extension, setup

NO_EXTENSIONS = os.environ.get("EDGEDISPATCH_NO_EXTENSIONS", "") not in ("", "0")
DEBUG = os.environ.get("EDGEDISPATCH_DEBUG", "") not in ("", "0")
ANNOTATE = os.environ.get("EDGEDISPATCH_ANNOTATE", "") not in ("", "0")


def extensions():
    if NO_EXTENSIONS:
        return []
    from Cython.Build import cythonize

    directives = {
        "language_level": 3,
        "freethreading_compatible": True,
        "boundscheck": DEBUG,
        "wraparound": False,
        "initializedcheck": DEBUG,
        "cdivision": True,
        "embedsignature": True,
    }
    macros = []
    # -g0: Python's own CFLAGS carry -g, and debug information makes the core
    # take a third longer to compile (the wait in a fresh clone's first
    # `./dev serve`) and its .so files four times larger.  Function symbols
    # stay; EDGEDISPATCH_DEBUG=1 builds with full debug information.
    cflags = ["-O0", "-g"] if DEBUG else ["-O2", "-g0"]
    if DEBUG:
        directives["linetrace"] = True
        macros += [("CYTHON_TRACE", "1"), ("CYTHON_TRACE_NOGIL", "1")]
    cflags.append("-std=c11")

    def ext(name, source):
        return Extension(
            name,
            [source],
            include_dirs=["_core/include"],
            define_macros=macros,
            extra_compile_args=cflags,
        )

    # The *_py.py sources are compiled as *_c modules; each *_c.pxd adds the
    # C types (Cython pure-Python mode, as aiohttp does).
    return cythonize(
        [
            ext("edgedispatch._core.ring_c", "edgedispatch/_core/ring_c.pyx"),
            ext("edgedispatch._core.tables_c", "edgedispatch/_core/tables_py.py"),
            ext("edgedispatch._core.decisions_c", "edgedispatch/_core/decisions_py.py"),
            ext("edgedispatch._core.scheduler_c", "edgedispatch/_core/scheduler_py.py"),
        ],
        compiler_directives=directives,
        annotate=ANNOTATE,
        nthreads=2,
    )


setup(ext_modules=extensions())
