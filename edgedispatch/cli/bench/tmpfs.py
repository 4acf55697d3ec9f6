"""A small file system that can be filled on cue: the full disk that the
fault suite gives the store.  A tmpfs, mounted when we may (as root);
otherwise a plain directory, and ``mounted`` says the fault cannot be
injected."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path

FILLER = ".filler"


class SmallDisk:
    def __init__(self, path: Path, size_mb: int = 256) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        self.mounted = False
        if os.geteuid() == 0 and shutil.which("mount"):
            done = subprocess.run(
                ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0700", "tmpfs", str(path)],
                capture_output=True,
            )
            self.mounted = done.returncode == 0

    def fill(self) -> None:
        """Take every free byte (writes then fail with ENOSPC)."""
        fd = os.open(self.path / FILLER, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for size in (1 << 20, 4096):  # then the last part of a megabyte
                while True:
                    try:
                        os.write(fd, b"\0" * size)
                    except OSError as exc:
                        if exc.errno != errno.ENOSPC:
                            raise
                        break
        finally:
            os.close(fd)

    def free(self) -> None:
        (self.path / FILLER).unlink(missing_ok=True)

    def close(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.path)], capture_output=True)
            self.mounted = False
