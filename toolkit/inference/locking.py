"""One `cit infer` run per output folder at a time, and an output folder that is the run's own.

The lock is an ``fcntl.flock`` on ``<output>/.cit-infer.lock``: the kernel releases it when the
holding process dies (even by SIGKILL), so a lock file left behind by a dead run never blocks the
next one. The file records the holder's pid, host and start time for the refusal message. It is
opened without following a link, and removed (still locked) when the run ends; a run that finds
the file replaced between its open and its lock starts over, so two runs never hold two files.
A run that wrote nothing (missing input or bundle, no images found) also removes the folders the
lock created, when empty.

:func:`refuse_links`: nothing the run writes may pass through a symbolic link that someone left in
the output folder (a link named ``parts`` would carry the journal to wherever it points).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path

LOCK_NAME = ".cit-infer.lock"


class LockedError(RuntimeError):
    """Another live run holds the output folder."""


class OutputLinkError(ValueError):
    """An entry the run writes in the output folder is a symbolic link."""


_LINK_HINT = "cit infer never writes through a link in --output: remove the link or choose another --output"


def refuse_links(output: str | os.PathLike, names) -> None:
    """Raise :class:`OutputLinkError` when one of ``names`` in ``output`` is a symbolic link, or a folder
    among them holds one (one level: the run writes no deeper)."""
    output = Path(output)
    for name in sorted(names):
        entry = output / name
        if entry.is_symlink():
            raise OutputLinkError(f"{entry} is a symbolic link (to {os.readlink(entry)}); {_LINK_HINT}")
        if entry.is_dir():
            for child in sorted(os.scandir(entry), key=lambda e: e.name):
                if child.is_symlink():
                    raise OutputLinkError(f"{child.path} is a symbolic link; {_LINK_HINT}")


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
        fd = self._open_locked()
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self.fd = fd
        return self

    def _open_locked(self, attempts: int = 5) -> int:
        for _ in range(attempts):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise OutputLinkError(f"{self.path} is a symbolic link; {_LINK_HINT}") from None
                raise
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _describe_holder(fd)
                os.close(fd)
                raise LockedError(
                    f"another `cit infer` run ({holder}) is writing to {self.path.parent}; "
                    "wait for it to finish or choose another --output"
                ) from None
            if _same_file(fd, self.path):
                return fd
            os.close(fd)  # the run before us removed (or someone replaced) the file meanwhile: again
        raise LockedError(
            f"{self.path} keeps being replaced while it is being locked; is another tool writing there?"
        )

    def release_in_child(self) -> None:
        """Close the inherited descriptor in a forked worker so the lock dies with the main process."""
        if self.fd is not None:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = None

    def release(self) -> None:
        """Remove the lock file (still locked: a run waiting on the old file sees it gone and starts
        over), unlock, and remove the folders acquire() created when they are empty."""
        if self.fd is None:
            return
        try:
            if _same_file(self.fd, self.path):
                self.path.unlink()
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        finally:
            os.close(self.fd)
            self.fd = None
        for folder in self.created:
            try:
                folder.rmdir()  # only when empty
            except OSError:
                break

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``path`` (not followed) still names the open file ``fd``."""
    try:
        named, held = os.lstat(path), os.fstat(fd)
    except OSError:
        return False
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)


def _describe_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "holder unknown"
    return f"pid {info.get('pid')} on {info.get('host')}, started {info.get('started')}"
