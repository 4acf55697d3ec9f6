"""Tenant code that tries to break out, for the containment tests.

It reads its attack from the job's metadata (as a command agent, ``python
hostile.py``, from EDGEDISPATCH_JOB_METADATA; as a native agent,
``hostile:entrypoint``, from ``ctx.metadata``).  An attack is JSON
``{"kind": ..., "args": ...}``; what it found goes to
``EDT_OUT/<job id>.json`` (written where the test can read it).

Kinds:
  read     args: paths; each read's first bytes, or the error's name
  signal   args: pids; os.kill(pid, 0) for each: "ok" or the error's name
  fork     fork until refused (children wait); the count and the refusal
  hog      args: MB; a child allocates that much and holds it; its end
  escape   args: a token; a double-forked, setsid'd process that lives on
           with the token in its command line, then the job ends at once
  env      the environment's names
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ESCAPEE = "import sys, time; time.sleep(600)"


def attack(kind: str, args: Any) -> dict[str, Any]:
    if kind == "read":
        found = {}
        for path in args:
            try:
                with open(path, "rb") as f:
                    found[path] = "ok:" + f.read(64).decode(errors="replace")
            except OSError as exc:
                found[path] = type(exc).__name__
            try:
                found[path + "/"] = "listed:" + ",".join(sorted(os.listdir(path))[:5])
            except OSError as exc:
                found[path + "/"] = type(exc).__name__
        return {"read": found}
    if kind == "signal":
        sent = {}
        for pid in args:
            try:
                os.kill(pid, 0)
                sent[str(pid)] = "ok"
            except OSError as exc:
                sent[str(pid)] = type(exc).__name__
        return {"signal": sent, "my_pid": os.getpid(), "uid": os.getuid()}
    if kind == "fork":
        kids = []
        error = ""
        for _ in range(10_000):
            try:
                pid = os.fork()
            except OSError as exc:
                error = type(exc).__name__
                break
            if pid == 0:
                time.sleep(30)
                os._exit(0)
            kids.append(pid)
        for pid in kids:
            os.kill(pid, 9)
        for pid in kids:
            os.waitpid(pid, 0)
        return {"forked": len(kids), "error": error}
    if kind == "hog":
        code = f"b = bytearray({int(args)} * 1024 * 1024); b[::4096] = b'x' * len(b[::4096]); print('held', flush=True); import time; time.sleep(5)"  # noqa: E501
        child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        return {"child_exit": child.returncode, "child_out": child.stdout}
    if kind == "escape":
        # Double fork and a new session: out of the job's process group, and
        # a grandchild nobody waits for.
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                os.execv(sys.executable, [sys.executable, "-c", ESCAPEE, args])
            os._exit(0)
        time.sleep(0.3)
        return {"escaped": True}
    if kind == "env":
        return {"env": sorted(os.environ)}
    raise ValueError(f"unknown attack {kind!r}")


def record(out: str, job_id: str, result: dict[str, Any]) -> None:
    tmp = Path(out) / f".{job_id}.tmp"
    tmp.write_text(json.dumps(result))
    tmp.rename(Path(out) / f"{job_id}.json")


async def entrypoint(ctx: Any) -> None:
    spec = json.loads(ctx.metadata)
    record(os.environ["EDT_OUT"], ctx.job_id, attack(spec["kind"], spec.get("args")))


if __name__ == "__main__":
    spec = json.loads(os.environ["EDGEDISPATCH_JOB_METADATA"])
    job = os.environ["EDGEDISPATCH_JOB_ID"]
    record(os.environ["EDT_OUT"], job, attack(spec["kind"], spec.get("args")))
