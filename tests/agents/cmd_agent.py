"""A command agent: records the environment it got, as a job would use it.

EDT_OUT: folder for <job id>.json.  EDT_MODE: record (default), crash (exit
3 after recording), hog (allocate memory until killed), sleep (run until
terminated)."""

import base64
import json
import os
import sys
import time
from pathlib import Path


def slice_ns() -> int | None:
    """The scheduler slice this process runs with (None where /proc does not say)."""
    try:
        with open("/proc/thread-self/sched") as f:
            return next(int(line.split()[-1]) for line in f if line.startswith("se.slice"))
    except (OSError, StopIteration, ValueError):
        return None


job_id = os.environ["EDGEDISPATCH_JOB_ID"]
token = os.environ["LIVEKIT_TOKEN"]
payload = token.split(".")[1]
claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
record = {
    "job_id": job_id,
    "url": os.environ["LIVEKIT_URL"],
    "room": os.environ["LIVEKIT_ROOM"],
    "agent_name": os.environ["LIVEKIT_AGENT_NAME"],
    "metadata": os.environ["EDGEDISPATCH_JOB_METADATA"],
    "claims": claims,
    "token": token,
    "secret_leaked": any(k in os.environ for k in ("EDGEDISPATCH_KEYS", "LIVEKIT_API_SECRET")),
    "pid": os.getpid(),
    "sched_slice_ns": slice_ns(),
}
out = Path(os.environ["EDT_OUT"])
(out / f".{job_id}.tmp").write_text(json.dumps(record))
os.rename(out / f".{job_id}.tmp", out / f"{job_id}.json")
print(f"command agent ran {job_id}", flush=True)
mode = os.environ.get("EDT_MODE", "record")
if mode == "crash":
    sys.exit(3)
if mode == "hog":
    blocks = []
    while True:
        blocks.append(bytearray(50 * 1024 * 1024))
        time.sleep(0.05)
if mode == "sleep":
    time.sleep(3600)
