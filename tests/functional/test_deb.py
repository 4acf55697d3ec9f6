"""The .deb (``./dev deb``): it installs the binary, the units, the system
user, the config (readable by the service's group only) and the state
directory; ``systemd-analyze verify`` is silent on the installed units; the
installed service runs under a real systemd, booted as pid 1 in namespaces
of its own (``systemd_boot.py``); and a purge takes it all away.  It
installs on this machine, so it runs only as root, once, and never over an
edgedispatch already installed.

``./dev test`` builds the .deb while the other tests run and names it in
``EDGEDISPATCH_TEST_DEB``: then it must be there.  Otherwise this tests the
.deb ``./dev deb`` left in ``dist/``, and is skipped without one."""

from __future__ import annotations

import fcntl
import grp
import os
import pwd
import re
import shutil
import socket
import stat
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgedispatch import sched

from . import systemd_boot
from .test_real_clients import wait_until

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


@pytest.fixture(scope="module")
def deb() -> Iterator[Path]:
    """The .deb, installed for this module's tests (the last purges it)."""
    with LOCK.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if installed():
            pytest.skip("edgedispatch is installed here: not touched")
        done = subprocess.run(["dpkg", "-i", str(DEBS[-1])], capture_output=True, text=True)
        try:
            assert done.returncode == 0, done.stdout + done.stderr
            yield DEBS[-1]
        finally:
            if installed():
                subprocess.run(["dpkg", "--purge", "edgedispatch"], capture_output=True)


def test_the_deb_installs_the_binary_the_units_the_user_and_the_config(deb: Path) -> None:
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


# ----------------------------------------------------------------------
# The installed units under a real systemd, booted as pid 1 in namespaces
# of its own (systemd_boot.py): what the protocol tests of test_systemd.py
# cannot show, systemd's side of it.

KEY, SECRET = "devkey", "deb-test-secret-0123456789abcdefghij"
#: WatchdogSec= is shortened so that the test sees a restart in seconds; the
#: unit's other settings are its own.  The socket unit listens on a port of
#: the test's (the unit's are 7880 and 5060).
SERVICE_DROPIN = "[Unit]\nDefaultDependencies=no\n[Service]\nWatchdogSec=3\n"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def booted(deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[systemd_boot.Booted]:
    why = systemd_boot.available()
    if why:
        pytest.skip(f"no systemd to boot: {why}")
    config = tmp_path_factory.mktemp("etc") / "edgedispatch.toml"
    config.write_text(
        f'[server]\nbind = "127.0.0.1"\nport = 0\ndrain_timeout = 60\n[keys]\n{KEY} = "{SECRET}"\n'
    )
    os.chown(config, 0, grp.getgrnam("edgedispatch").gr_gid)
    config.chmod(0o640)
    socket_dropin = (
        f"[Socket]\nListenStream=\nListenDatagram=\nListenStream=127.0.0.1:{free_port()}\n"
    )
    with systemd_boot.boot(
        binds={"/etc/edgedispatch/edgedispatch.toml": config},
        dropins={
            "edgedispatch.service.d/test.conf": SERVICE_DROPIN,
            "edgedispatch.socket.d/test.conf": socket_dropin,
        },
    ) as b:
        yield b


def url_of(b: systemd_boot.Booted) -> str:
    """The server's address, from the STATUS= line systemd keeps."""
    status = b.show("edgedispatch.service", "StatusText")["StatusText"]
    found = re.search(r"port (\d+)", status)
    assert found, status
    return f"http://127.0.0.1:{found.group(1)}"


def cli(url: str, *argv: str) -> str:
    done = subprocess.run(
        ["/usr/bin/edgedispatch", *argv, "--url", url, "--api-key", KEY, "--api-secret", SECRET],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def proc_status(b: systemd_boot.Booted, pid: str) -> dict[str, str]:
    out = b.run("cat", f"/proc/{pid}/status")
    return {k: v.strip() for k, _, v in (line.partition(":") for line in out.splitlines())}


def test_systemd_starts_the_service_once_it_is_ready_and_it_runs_unprivileged(
    booted: systemd_boot.Booted,
) -> None:
    # Type=notify: systemctl start returns once READY=1 came, and /readyz
    # answers by then.
    booted.run("systemctl", "start", "edgedispatch.service")
    state = booted.show("edgedispatch.service", "ActiveState", "SubState", "MainPID", "User")
    assert (state["ActiveState"], state["SubState"]) == ("active", "running"), state
    with urllib.request.urlopen(f"{url_of(booted)}/readyz", timeout=5) as resp:
        assert resp.status == 200
    status = proc_status(booted, state["MainPID"])
    assert status["Uid"].split()[0] == str(pwd.getpwnam("edgedispatch").pw_uid)
    assert (status["CapEff"], status["CapBnd"]) == ("0" * 16, "0" * 16)
    assert (status["NoNewPrivs"], status["Seccomp"]) == ("1", "2")
    if sched.supported():  # the unit's system-call filter lets it ask for its slices
        pid = state["MainPID"]
        found = re.search(
            r"se\.slice\s*:\s*(\d+)", booted.run("cat", f"/proc/{pid}/task/{pid}/sched")
        )
        assert found and int(found.group(1)) == 500_000
    journal = booted.journal("edgedispatch.service")
    assert "recovered 0 rooms" in journal and "/var/lib/edgedispatch" in journal


PROBE = (
    "sh -c 'cat /etc/edgedispatch/edgedispatch.toml && echo READ-CONFIG;"
    " ls /var/lib/edgedispatch && echo READ-STATE;"
    " mkdir /sys/fs/cgroup/escape && echo WROTE-CGROUP;"
    " echo PROBE-DONE $(id -u)'"
)


def test_tenant_code_is_sandboxed_under_the_units_hardening(booted: systemd_boot.Booted) -> None:
    # bubblewrap needs user namespaces, mount and pivot_root: the unit's
    # RestrictNamespaces=, SystemCallFilter= and PrivateUsers= must allow it.
    url = url_of(booted)
    cli(url, "agent", "add", "probe", "--command", PROBE)
    cli(url, "dispatch", "create", "--room", "deb-room", "--agent-name", "probe")
    wait_until(lambda: "PROBE-DONE" in booted.journal("edgedispatch.service"),
               30, "the probe's end in the journal")  # fmt: skip
    journal = booted.journal("edgedispatch.service")
    for escaped in ("READ-CONFIG", "READ-STATE", "WROTE-CGROUP", SECRET):
        assert escaped not in journal, escaped
    assert "No such file or directory" in journal  # the config is not in its view


def test_the_delegated_cgroup_subtree_is_writable_by_the_service_alone(
    booted: systemd_boot.Booted,
) -> None:
    # Delegate=yes and ProtectControlGroups=yes with ReadWritePaths= for the
    # service's own cgroup: in the service's mount namespace, as its user,
    # a cell can be made there and nowhere else.
    main = booted.show("edgedispatch.service", "MainPID")["MainPID"]
    user = pwd.getpwnam("edgedispatch")
    as_service = ["nsenter", "-t", main, "-m", "setpriv", f"--reuid={user.pw_uid}",
                  f"--regid={user.pw_gid}", "--clear-groups"]  # fmt: skip
    own = "/sys/fs/cgroup/system.slice/edgedispatch.service/deb-test-cell"
    booted.run(*as_service, "mkdir", own)
    booted.run(*as_service, "rmdir", own)
    for elsewhere in ("/sys/fs/cgroup/system.slice/deb-test-cell", "/sys/fs/cgroup/deb-test-cell"):
        refused = booted.run(*as_service, "mkdir", elsewhere, check=False)
        assert not booted.run("sh", "-c", f"test -e {elsewhere} && echo there", check=False), (
            refused
        )


def test_a_stuck_event_loop_is_killed_and_restarted_by_the_watchdog(
    booted: systemd_boot.Booted,
) -> None:
    before = booted.show("edgedispatch.service", "MainPID", "NRestarts")
    booted.run("kill", "-STOP", before["MainPID"])
    wait_until(lambda: booted.show(
        "edgedispatch.service", "NRestarts")["NRestarts"] != before["NRestarts"],
        30, "a restart")  # fmt: skip
    booted.run("systemctl", "start", "edgedispatch.service")  # returns once it is ready again
    after = booted.show("edgedispatch.service", "MainPID", "ActiveState")
    assert after["ActiveState"] == "active" and after["MainPID"] != before["MainPID"]
    assert "Watchdog timeout" in booted.journal("edgedispatch.service")
    with urllib.request.urlopen(f"{url_of(booted)}/readyz", timeout=5) as resp:
        assert resp.status == 200  # and the agent definitions came back from the store
    assert "probe" in cli(url_of(booted), "agent", "list")


def test_a_stop_drains_and_a_running_local_job_ends_on_its_own(
    booted: systemd_boot.Booted,
) -> None:
    # KillMode=mixed: SIGTERM reaches the server alone, which drains and
    # waits for its local jobs; they are not signalled.
    url = url_of(booted)
    cli(
        url,
        "agent",
        "add",
        "slow",
        "--command",
        "sh -c 'echo SLOW-STARTED; sleep 3; echo SLOW-ENDED'",
    )
    cli(url, "dispatch", "create", "--room", "slow-room", "--agent-name", "slow")
    wait_until(lambda: "SLOW-STARTED" in booted.journal("edgedispatch.service"),
               30, "the slow job's start")  # fmt: skip
    started = time.monotonic()
    booted.run("systemctl", "stop", "edgedispatch.service")
    assert time.monotonic() - started > 1.5  # it waited for the job
    journal = booted.journal("edgedispatch.service")
    assert "draining" in journal and "SLOW-ENDED" in journal
    assert booted.show("edgedispatch.service", "ActiveState")["ActiveState"] == "inactive"


def test_the_socket_unit_starts_the_service_at_the_first_connection(
    booted: systemd_boot.Booted,
) -> None:
    booted.run("systemctl", "start", "edgedispatch.socket")
    listen = booted.show("edgedispatch.socket", "Listen")["Listen"]
    port = re.search(r"127\.0\.0\.1:(\d+)", listen)
    assert port, listen
    assert booted.show("edgedispatch.service", "ActiveState")["ActiveState"] == "inactive"
    with urllib.request.urlopen(f"http://127.0.0.1:{port.group(1)}/readyz", timeout=30) as resp:
        assert resp.status == 200
    assert booted.show("edgedispatch.service", "ActiveState")["ActiveState"] == "active"
    booted.run("systemctl", "stop", "edgedispatch.service", "edgedispatch.socket")


def test_a_purge_takes_it_all_away(deb: Path) -> None:
    purged = subprocess.run(["dpkg", "--purge", "edgedispatch"], capture_output=True, text=True)
    assert purged.returncode == 0, purged.stdout + purged.stderr
    for path in ("/usr/bin/edgedispatch", "/opt/edgedispatch", "/etc/edgedispatch",
                 "/var/lib/edgedispatch", "/lib/systemd/system/edgedispatch.service"):  # fmt: skip
        assert not os.path.lexists(path), path
    with pytest.raises(KeyError):
        pwd.getpwnam("edgedispatch")
