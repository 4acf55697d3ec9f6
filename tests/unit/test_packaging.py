"""What an installed copy needs at run time: no Cython."""

from __future__ import annotations

import os
import subprocess
import sys


def test_pure_core_runs_without_cython() -> None:
    code = (
        "import sys\n"
        "sys.modules['cython'] = None  # as in a venv with only the runtime dependencies\n"
        "from edgedispatch import _core\n"
        "from edgedispatch._core import scheduler_py, tables_py\n"
        "from edgedispatch.cli.bench import core\n"
        "result = core.measure(_core.implementations()['python'], workers=4, jobs=300)\n"
        "print(_core.COMPILED, scheduler_py.cython.__name__, tables_py.cython.__name__,\n"
        "      result['decisions_per_s'] > 0)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "EDGEDISPATCH_NO_EXTENSIONS": "1"},
    )
    assert out.returncode == 0, out.stderr
    shim = "edgedispatch._core._cython_shim"
    assert out.stdout.split() == ["False", shim, shim, "True"]
