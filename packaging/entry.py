"""The frozen binary's entry point (PyInstaller: ``./dev dist``).

The server starts its helper processes with its own interpreter:
``sys.executable -m edgedispatch.net.media_worker`` (rooms' media),
``sys.executable -m edgedispatch.runtime.zygote`` (native agents) and the
reaper (``runtime.contain``).  Frozen, ``sys.executable`` is this binary, so
it does with such arguments what ``python`` would: runs the module.
Anything else is the ``edgedispatch`` command line.
"""

from __future__ import annotations

import runpy
import sys

#: Interpreter flags the server passes; a frozen build has no site or
#: environment to ignore, so they change nothing here.
_PYTHON_FLAGS = {"-I", "-S", "-E", "-s", "-B", "-u"}


def main() -> int:
    args = sys.argv[1:]
    while args and args[0] in _PYTHON_FLAGS:
        args = args[1:]
    if len(args) >= 2 and args[0] == "-m":
        sys.argv = [args[1], *args[2:]]
        runpy.run_module(args[1], run_name="__main__", alter_sys=True)
        return 0
    from edgedispatch.cli import main as cli

    return cli()


if __name__ == "__main__":
    sys.exit(main())
