"""The server under systemd's protocols, without systemd (it is not pid 1
here): readiness and watchdog notices on a datagram socket the test owns,
and listening sockets passed as systemd passes them (``LISTEN_FDS``)."""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import serve_argv

OPTIONS = (
    "OPTIONS sip:edge@127.0.0.1 SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK-probe1\r\n"
    "Max-Forwards: 70\r\nFrom: <sip:probe@127.0.0.1>;tag=p1\r\nTo: <sip:edge@127.0.0.1>\r\n"
    "Call-ID: probe-1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
)


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=20)


def notices(sock: socket.socket, until: str, timeout: float = 15.0) -> list[str]:
    """The datagrams received until one holds the line ``until``."""
    got: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            got.append(sock.recv(4096).decode())
        except TimeoutError:
            break
        if until in got[-1].split("\n"):
            return got
    raise AssertionError(f"no {until} in {got}")


def ready(url: str) -> int:
    with urllib.request.urlopen(f"{url}/readyz", timeout=5) as resp:
        return int(resp.status)


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_ready_watchdog_and_stopping_are_notified(
    tmp_path: Path, procs: list[subprocess.Popen[str]], abstract: bool, loop_kind: str
) -> None:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if abstract:
        name = f"edgedispatch-test-{os.getpid()}-{time.monotonic_ns()}"
        listener.bind("\0" + name)
        address = "@" + name
    else:
        address = str(tmp_path / "notify")
        listener.bind(address)
    env = {**os.environ, "NOTIFY_SOCKET": address, "WATCHDOG_USEC": "200000"}
    proc = subprocess.Popen(
        serve_argv(loop_kind, "--data-dir", str(tmp_path / "data")),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    procs.append(proc)
    assert proc.stdout is not None
    match = re.search(r"listening on (http://\S+)", proc.stdout.readline())
    assert match
    url = match.group(1)

    first = notices(listener, "READY=1")
    lines = first[-1].split("\n")
    # Ready means ready: the store recovered, the port answers.
    assert f"MAINPID={proc.pid}" in lines
    assert any(re.fullmatch(r"STATUS=serving on port \d+", line) for line in lines)
    assert ready(url) == 200
    # The loop kicks the watchdog at half WatchdogSec (0.1 s here).
    started = time.monotonic()
    kicks = 0
    while kicks < 5:
        kicks += notices(listener, "WATCHDOG=1", timeout=2.0)[-1] == "WATCHDOG=1"
    assert time.monotonic() - started < 2.0
    # A stuck loop stops kicking (systemd would restart the service).
    proc.send_signal(signal.SIGSTOP)
    listener.settimeout(0.1)
    while True:  # what was sent before the stop
        try:
            listener.recv(4096)
        except TimeoutError:
            break
    listener.settimeout(0.6)
    with pytest.raises(TimeoutError):
        listener.recv(4096)
    proc.send_signal(signal.SIGCONT)
    assert notices(listener, "WATCHDOG=1", timeout=2.0)

    proc.send_signal(signal.SIGTERM)
    stopping = notices(listener, "STOPPING=1")
    assert any(line.startswith("STATUS=draining") for line in stopping[-1].split("\n"))
    assert proc.wait(timeout=20) == 0
    listener.close()


def high_copy(sock: socket.socket) -> int:
    """A copy of ``sock``'s descriptor above the numbers the child gets."""
    return fcntl.fcntl(sock.fileno(), fcntl.F_DUPFD, 100)


def spawn_with_sockets(
    argv: list[str], socks: list[socket.socket], env: dict[str, str]
) -> subprocess.Popen[str]:
    """``argv`` with ``socks`` at descriptors 3, 4, ... and LISTEN_PID set
    to its own pid, as systemd starts a socket-activated service."""
    copies = [high_copy(s) for s in socks]

    def place() -> None:
        for i, fd in enumerate(copies):
            os.dup2(fd, 3 + i)

    try:
        return subprocess.Popen(
            ["sh", "-c", 'LISTEN_PID=$$ exec "$@"', "sh", *argv],
            env=env,
            preexec_fn=place,
            pass_fds=tuple(range(3, 3 + len(socks))),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    finally:
        for fd in copies:
            os.close(fd)


@pytest.mark.parametrize(
    "names",
    # Named by FileDescriptorName=, or as systemd names them by default
    # (the socket unit's name): then by kind and order, as in
    # systemd/edgedispatch.socket.
    ["http:sip-udp:sip-tcp", "edgedispatch.socket:edgedispatch.socket:edgedispatch.socket"],
    ids=["named", "unnamed"],
)
def test_sockets_passed_by_systemd_are_served(
    tmp_path: Path, procs: list[subprocess.Popen[str]], loop_kind: str, names: str
) -> None:
    http = socket.create_server(("127.0.0.1", 0))
    port = http.getsockname()[1]
    sip_udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sip_udp.bind(("127.0.0.1", 0))
    sip_port = sip_udp.getsockname()[1]
    sip_tcp = socket.create_server(("127.0.0.1", sip_port))
    config = tmp_path / "edgedispatch.toml"
    config.write_text("[sip]\nenabled = true\nport = 0\n")
    env = {**os.environ, "LISTEN_FDS": "3", "LISTEN_FDNAMES": names}
    proc = spawn_with_sockets(
        serve_argv(loop_kind, "--config", str(config)), [http, sip_udp, sip_tcp], env
    )
    procs.append(proc)
    for s in (http, sip_udp, sip_tcp):
        s.close()  # the server holds them now
    assert proc.stdout is not None and proc.stderr is not None
    line = proc.stdout.readline()
    assert f"listening on http://127.0.0.1:{port}" in line, line + proc.stderr.read()
    assert ready(f"http://127.0.0.1:{port}") == 200
    # SIP on the passed sockets: an OPTIONS probe over UDP and over TCP.
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.settimeout(10)
    probe.sendto(OPTIONS.encode(), ("127.0.0.1", sip_port))
    assert probe.recv(4096).startswith(b"SIP/2.0 200")
    probe.close()
    with socket.create_connection(("127.0.0.1", sip_port), timeout=10) as stream:
        # A new transaction (another branch), not a copy of the first.
        stream.sendall(OPTIONS.replace("UDP", "TCP").replace("probe1", "probe2").encode())
        assert stream.recv(4096).startswith(b"SIP/2.0 200")


def test_serve_fd_takes_an_inherited_http_socket(
    procs: list[subprocess.Popen[str]], loop_kind: str
) -> None:
    http = socket.create_server(("127.0.0.1", 0))
    port = http.getsockname()[1]
    # Without LISTEN_FDS: only --fd says what the descriptor is.
    proc = spawn_with_sockets(
        [*serve_argv(loop_kind), "--fd", "3"], [http], {**os.environ, "LISTEN_FDS": ""}
    )
    procs.append(proc)
    http.close()
    assert proc.stdout is not None and proc.stderr is not None
    line = proc.stdout.readline()
    assert f"listening on http://127.0.0.1:{port}" in line, line + proc.stderr.read()
    assert ready(f"http://127.0.0.1:{port}") == 200


def test_a_bad_fd_is_refused_with_a_clear_error(loop_kind: str) -> None:
    done = subprocess.run(
        [*serve_argv(loop_kind), "--fd", "97"], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 2
    assert "--fd 97" in done.stderr


UNITS = Path(__file__).resolve().parents[2] / "systemd"


def test_the_units_verify_and_the_service_is_hardened(tmp_path: Path) -> None:
    """``systemd-analyze verify`` has nothing to say, and ``security``
    scores the service's exposure 2.1 (a bare unit: 9.6; the namespaces and
    system calls bubblewrap needs to contain tenant code cost the rest, as
    the unit's comments say, and 0.1 is ``sched_setattr``, for the short
    scheduler slices)."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze missing")
    # verify wants the program to exist: the one this test runs.
    program = shutil.which("edgedispatch") or sys.executable
    for unit in ("edgedispatch.service", "edgedispatch.socket"):
        text = (UNITS / unit).read_text().replace("/usr/bin/edgedispatch", program)
        (tmp_path / unit).write_text(text)
    units = [str(tmp_path / u) for u in ("edgedispatch.service", "edgedispatch.socket")]
    done = subprocess.run([analyze, "verify", *units], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout + done.stderr == "", done.stdout + done.stderr
    done = subprocess.run(
        [analyze, "security", "--offline=yes", str(tmp_path / "edgedispatch.service")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    score = re.search(r"Overall exposure level for \S+: ([\d.]+)", done.stdout)
    assert score, done.stdout[-2000:] + done.stderr
    assert float(score.group(1)) <= 2.1
