"""One `cit infer` run per output folder at a time.

The lock is an ``fcntl.flock`` on ``<output>/.cit-infer.lock``: the kernel releases it when the
holding process dies (even by SIGKILL), so a lock file left behind by a dead run never blocks the
next one. The file records the holder's pid, host and start time for the refusal message.

A run that wrote nothing (missing input or bundle, no images found) leaves nothing behind: on release,
a lock file alone in its folder is removed, and so are the folders the lock created, when empty.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

LOCK_NAME = ".cit-infer.lock"


class LockedError(RuntimeError):
    """Another live run holds the output folder."""


class OutputLock:
    """Exclusive, non-blocking lock on an output folder; use as a context manager or acquire()/release()."""

    def __init__(self, output_dir: str | os.PathLike):
        self.path = Path(output_dir) / LOCK_NAME
        self.fd: int | None = None
        self.created: list[Path] = []  # folders acquire() made, deepest first

    def acquire(self) -> OutputLock:
        folder = self.path.parent
        self.created = []
        while not folder.exists() and folder != folder.parent:
            self.created.append(folder)
            folder = folder.parent
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe_holder(fd)
            os.close(fd)
            raise LockedError(
                f"another `cit infer` run ({holder}) is writing to {self.path.parent}; "
                "wait for it to finish or choose another --output"
            ) from None
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self.fd = fd
        return self

    def release_in_child(self) -> None:
        """Close the inherited descriptor in a forked worker so the lock dies with the main process."""
        if self.fd is not None:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = None

    def release(self) -> None:
        """Unlock; when the output folder holds nothing but the lock file, remove it (and created folders)."""
        if self.fd is None:
            return
        alone = False
        try:
            os.ftruncate(self.fd, 0)
            alone = self._alone()
            if alone:  # still locked while unlinking, so no other run can be between its open and flock
                self.path.unlink(missing_ok=True)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        finally:
            os.close(self.fd)
            self.fd = None
        if alone:
            for folder in self.created:
                try:
                    folder.rmdir()  # only when empty
                except OSError:
                    break

    def _alone(self) -> bool:
        try:
            return [entry.name for entry in os.scandir(self.path.parent)] == [LOCK_NAME]
        except OSError:
            return False

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _describe_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "holder unknown"
    return f"pid {info.get('pid')} on {info.get('host')}, started {info.get('started')}"
