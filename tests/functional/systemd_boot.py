"""A real systemd as pid 1, for the installed .deb's units: booted in new
PID, mount, cgroup, UTS and IPC namespaces (the host's systemd, if any, is
not touched, nor is its cgroup tree), on the host's network and files.

Inside, before systemd starts:
- ``/tmp``, ``/var/tmp`` and ``/run`` are fresh tmpfs (systemd empties
  ``/tmp`` at boot; the host's must stay as it is);
- ``/sys/fs/cgroup`` is a cgroup2 mount whose root is a cgroup made for the
  boot below the test's own: the layout of a current Debian, whatever the
  host's, and everything systemd creates is removed with that one cgroup;
- the given files are bind-mounted over installed ones (the config);
- drop-ins go into ``/run/systemd/system``.

systemd boots to an empty target: nothing starts but what the test asks
for.  ``DefaultDependencies=no`` on the service keeps sysinit.target (udev,
tmpfiles, ...) out; the settings under test are the unit's own.

Needs root, util-linux's ``unshare`` and ``nsenter``, and systemd's binary;
``available()`` says whether this host has them."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from edgedispatch.runtime import cgroups

SYSTEMD = Path("/lib/systemd/systemd")
TARGET = "edgedispatch-test.target"

INSIDE = """
set -e
mount --make-rprivate /
{binds}
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /var/tmp
mount -t tmpfs tmpfs /run
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mkdir -p /run/systemd/system
printf '[Unit]\\nDefaultDependencies=no\\n' > /run/systemd/system/{target}
{dropins}
exec env container=edgedispatch-test {systemd} --system --unit={target} --log-target=journal-or-kmsg
"""


def available() -> str:
    """Why a systemd cannot be booted here ("" when it can)."""
    if os.geteuid() != 0:
        return "needs root"
    for tool in ("unshare", "nsenter", "mount"):
        if not shutil.which(tool):
            return f"no {tool}"
    if not SYSTEMD.exists():
        return f"no {SYSTEMD}"
    if not (cgroups.unified_hierarchy() / "cgroup.controllers").exists():
        return "no cgroup2 hierarchy"
    probe = cgroups.own_unified_cgroup() / f"edgedispatch-test-probe-{os.getpid()}"
    try:
        probe.mkdir()
        probe.rmdir()
    except OSError as exc:
        return f"no cgroup of our own to boot it in ({exc.strerror})"
    return ""


class Booted:
    """A running systemd; ``run`` executes a command in its namespaces."""

    def __init__(self, proc: subprocess.Popen[bytes], cgroup: Path) -> None:
        self.proc = proc
        self.cgroup = cgroup
        self.pid = 0  # systemd's, as the host sees it

    def run(self, *argv: str, timeout: float = 60, check: bool = True) -> str:
        done = subprocess.run(
            ["nsenter", "-t", str(self.pid), "-a", *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and done.returncode != 0:
            log = subprocess.run(
                ["nsenter", "-t", str(self.pid), "-a", "journalctl", "--no-pager", "-n", "40"],
                capture_output=True, text=True, timeout=timeout,
            )  # fmt: skip
            raise AssertionError(
                f"{argv}: exit {done.returncode}\n{done.stdout}{done.stderr}\n{log.stdout}"
            )
        return done.stdout

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.run("systemctl", "show", unit, *(f"--property={p}" for p in props))
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self, unit: str) -> str:
        return self.run("journalctl", "--no-pager", "-o", "cat", "-u", unit)


@contextlib.contextmanager
def boot(binds: dict[str, Path], dropins: dict[str, str]) -> Iterator[Booted]:
    """systemd, with ``binds`` (installed path: file to mount over it) and
    ``dropins`` (path under /run/systemd/system: text)."""
    cgroup = cgroups.own_unified_cgroup() / f"edgedispatch-test-systemd-{os.getpid()}"
    cgroup.mkdir()
    lines = [f"mount --bind {src} {dst}" for dst, src in binds.items()]
    writes = []
    for path, text in dropins.items():
        full = f"/run/systemd/system/{path}"
        writes.append(f"mkdir -p {os.path.dirname(full)}")
        writes.append(f"cat > {full} <<'DROPIN'\n{text}\nDROPIN")
    script = INSIDE.format(
        binds="\n".join(lines), dropins="\n".join(writes), target=TARGET, systemd=SYSTEMD
    )
    procs_file = cgroup / "cgroup.procs"

    def into_cgroup() -> None:  # before unshare: its cgroup namespace is rooted here
        procs_file.write_text(str(os.getpid()))

    proc = subprocess.Popen(
        [
            "unshare",
            "--pid",
            "--fork",
            "--mount",
            "--cgroup",
            "--uts",
            "--ipc",
            "--mount-proc",
            "sh",
            "-c",
            script,
        ],  # fmt: skip
        preexec_fn=into_cgroup,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    booted = Booted(proc, cgroup)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            booted.pid = _systemd_pid(cgroup)
            if booted.pid:
                state = subprocess.run(
                    ["nsenter", "-t", str(booted.pid), "-a", "systemctl", "is-system-running"],
                    capture_output=True, text=True, timeout=10,
                )  # fmt: skip
                if state.stdout.strip() in ("running", "degraded"):
                    break
            if proc.poll() is not None:
                raise AssertionError(f"systemd did not boot: {proc.stderr.read()!r}")  # type: ignore[union-attr]
            time.sleep(0.1)
        else:
            raise AssertionError("systemd did not reach its target in 30 s")
        # The service logs to the journal (StandardOutput=journal).
        booted.run("systemctl", "start", "systemd-journald.socket", "systemd-journald.service")
        yield booted
    finally:
        _halt(booted)


def _systemd_pid(cgroup: Path) -> int:
    """systemd's pid, once it has exec'd (the shell before it has the same)."""
    for path in cgroup.rglob("cgroup.procs"):
        for line in path.read_text().split():
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{line}/exe") == str(SYSTEMD.resolve()):
                    return int(line)
    return 0


def _halt(booted: Booted) -> None:
    """Kill the namespace's pid 1 (every process in it dies with it), then
    remove the cgroups systemd made."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(booted.proc.pid, signal.SIGKILL)
    if booted.pid:
        with contextlib.suppress(ProcessLookupError):
            os.kill(booted.pid, signal.SIGKILL)
    booted.proc.communicate(timeout=30)  # and its stderr pipe closed
    deadline = time.monotonic() + 10
    while booted.cgroup.exists():
        for path in sorted(booted.cgroup.rglob("*"), key=lambda p: -len(p.parts)):
            if path.is_dir():
                with contextlib.suppress(OSError):
                    path.rmdir()
        with contextlib.suppress(OSError):
            booted.cgroup.rmdir()
        if time.monotonic() > deadline:
            raise AssertionError(f"{booted.cgroup} not removed: {list(booted.cgroup.rglob('*'))}")
        time.sleep(0.05)
