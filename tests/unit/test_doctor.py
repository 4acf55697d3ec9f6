"""``edgedispatch doctor``: each section, and the reasons it cannot serve."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from edgedispatch import sched
from edgedispatch.store.sqlite import FILENAME, SCHEMA_VERSION, SqliteStore


def doctor(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgedispatch", "doctor", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
    )


def user_version(path: Path) -> int:
    db = sqlite3.connect(path)
    try:
        return int(db.execute("PRAGMA user_version").fetchone()[0])
    finally:
        db.close()


def test_doctor_prints_every_section_and_can_serve(tmp_path: Path) -> None:
    SqliteStore(tmp_path).close()  # a store of this build
    out = doctor("--dev", "--port", "0", "--data-dir", str(tmp_path))
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    for line in (
        "\nloaded\n",
        "  core: ",
        "  event loop: ",
        "  aiortc: ",
        "  livekit rtc SDK: ",
        "  sipp (tests, bench sip): ",
        "\ncontainment (sandbox.mode auto)\n",
        "  environment: built for each process",
        "\nstore\n",
        f"  data directory: {tmp_path}\n",
        f"schema {SCHEMA_VERSION} (current)",
        "\nlisteners\n",
        "  http: 127.0.0.1:0 ",
        "  sip: off",
        "\nlimits\n",
        "  open files (RLIMIT_NOFILE): ",
        "  memory (cgroup): ",
        "  scheduler slices: "
        + ("0.5 ms for the event loop" if sched.supported() else "the kernel's default"),
    ):
        assert line in text, line
    assert text.endswith("\nready to serve\n") and out.stderr == ""


def test_a_store_from_a_newer_edgedispatch_cannot_be_served_and_is_left_alone(
    tmp_path: Path,
) -> None:
    db = sqlite3.connect(tmp_path / FILENAME)
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    db.close()
    out = doctor("--dev", "--data-dir", str(tmp_path))
    assert out.returncode == 1
    assert f"schema {SCHEMA_VERSION + 1}: newer than this build's {SCHEMA_VERSION}" in out.stdout
    assert "cannot serve:" in out.stdout and "upgrade, or restore a backup" in out.stdout
    assert user_version(tmp_path / FILENAME) == SCHEMA_VERSION + 1


def test_an_older_store_is_reported_and_not_migrated(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / FILENAME)
    db.execute("PRAGMA user_version=1")
    db.close()
    out = doctor("--dev", "--data-dir", str(tmp_path))
    assert out.returncode == 0, out.stdout
    assert f"schema 1: migrated to {SCHEMA_VERSION} at the next start" in out.stdout
    assert user_version(tmp_path / FILENAME) == 1


def test_doctor_says_why_it_cannot_serve() -> None:
    no_keys = doctor(EDGEDISPATCH_KEYS="", LIVEKIT_KEYS="")
    assert no_keys.returncode == 1 and "no API keys" in no_keys.stdout
    pure = doctor(EDGEDISPATCH_KEYS="k1: " + "s" * 32, EDGEDISPATCH_NO_EXTENSIONS="1")
    assert pure.returncode == 1
    assert "core: pure Python" in pure.stdout and "--allow-pure-python" in pure.stdout
    allowed = doctor(
        "--allow-pure-python", "--port", "0",
        EDGEDISPATCH_KEYS="k1: " + "s" * 32, EDGEDISPATCH_NO_EXTENSIONS="1",
    )  # fmt: skip
    assert allowed.returncode == 0, allowed.stdout
    for out in (no_keys, pure, allowed):
        assert "Traceback" not in out.stdout + out.stderr


def test_a_sip_tls_certificate_that_cannot_load_is_a_reason_not_to_serve(
    tmp_path: Path,
) -> None:
    junk = tmp_path / "sip.pem"
    junk.write_text("not a certificate")
    conf = tmp_path / "edgedispatch.toml"
    conf.write_text(
        '[keys]\ndevkey = "secret"\n'
        f'[sip]\nenabled = true\ntls_cert = "{junk}"\ntls_key = "{junk}"\n'
    )
    out = doctor("--config", str(conf))
    assert out.returncode == 1, out.stdout
    assert f":5061 (certificate {junk})" in out.stdout and "  sip: tls " in out.stdout
    assert "sip.tls_cert: cannot load the certificate and key" in out.stdout
