"""The .deb (``./dev deb``): it installs the binary, the units, the system
user, the config (readable by the service's group only) and the state
directory; ``systemd-analyze verify`` is silent on the installed units; and
a purge takes it all away.  It installs on this machine, so it runs only as
root, once, and never over an edgedispatch already installed.

``./dev test`` builds the .deb while the other tests run and names it in
``EDGEDISPATCH_TEST_DEB``: then it must be there.  Otherwise this tests the
.deb ``./dev deb`` left in ``dist/``, and is skipped without one."""

from __future__ import annotations

import fcntl
import grp
import os
import pwd
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILT = os.environ.get("EDGEDISPATCH_TEST_DEB", "")
DEBS = [Path(BUILT)] if BUILT else sorted((ROOT / "dist").glob("edgedispatch_*.deb"))


def installed() -> bool:
    done = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", "edgedispatch"], capture_output=True, text=True
    )
    return "installed" in done.stdout


pytestmark = [
    pytest.mark.once,  # it installs on the machine
    pytest.mark.skipif(not DEBS, reason="no dist/edgedispatch_*.deb: ./dev deb"),
    pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("dpkg"), reason="needs root and dpkg"),
]


#: Held while the test has the package installed: two test runs on one
#: machine take turns (else the second would find the first one's install
#: and skip, or purge it from under the first one's checks).
LOCK = Path("/tmp/edgedispatch-deb-test.lock")


@pytest.fixture
def turn() -> Iterator[None]:
    with LOCK.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def test_the_deb_installs_the_service_and_purges_clean(turn: None) -> None:
    if installed():
        pytest.skip("edgedispatch is installed here: not touched")
    done = subprocess.run(["dpkg", "-i", str(DEBS[-1])], capture_output=True, text=True)
    try:
        assert done.returncode == 0, done.stdout + done.stderr
        assert os.readlink("/usr/bin/edgedispatch") == "/opt/edgedispatch/edgedispatch"
        version = subprocess.run(
            ["/usr/bin/edgedispatch", "--version"], capture_output=True, text=True, timeout=60
        )
        assert version.stdout.startswith("edgedispatch "), version.stderr
        user = pwd.getpwnam("edgedispatch")
        state = os.stat("/var/lib/edgedispatch")
        assert (state.st_uid, stat.S_IMODE(state.st_mode)) == (user.pw_uid, 0o700)
        config = os.stat("/etc/edgedispatch/edgedispatch.toml")
        assert stat.S_IMODE(config.st_mode) == 0o640
        assert grp.getgrgid(config.st_gid).gr_name == "edgedispatch"
        units = [
            "/lib/systemd/system/edgedispatch.service",
            "/lib/systemd/system/edgedispatch.socket",
        ]
        if shutil.which("systemd-analyze"):
            verify = subprocess.run(
                ["systemd-analyze", "verify", *units], capture_output=True, text=True, timeout=60
            )
            assert verify.returncode == 0 and not verify.stdout + verify.stderr, verify.stderr
    finally:
        purged = subprocess.run(["dpkg", "--purge", "edgedispatch"], capture_output=True, text=True)
    assert purged.returncode == 0, purged.stdout + purged.stderr
    for path in ("/usr/bin/edgedispatch", "/opt/edgedispatch", "/etc/edgedispatch",
                 "/var/lib/edgedispatch", "/lib/systemd/system/edgedispatch.service"):  # fmt: skip
        assert not os.path.lexists(path), path
    with pytest.raises(KeyError):
        pwd.getpwnam("edgedispatch")
