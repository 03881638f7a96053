"""Running a bundle as a user does, from another process: ``python -m monai.bundle run ...`` in a
subprocess with its output in a log file, a progress bar that follows the epochs the run writes, and
the one line of the log that says why a failed run failed."""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger(__name__)


def error_line(log_text: str) -> str:
    """The line of a log that says why a run failed: the last exception line that is not MONAI's
    "Failed to evaluate / instantiate" wrapper (the cause is printed above it), else the last line."""
    pattern = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b(:.*)?$")
    found = [line.strip() for line in log_text.splitlines() if pattern.match(line)]
    causes = [line for line in found if not line.startswith("RuntimeError: Failed to ")]
    lines = causes or found or [line.strip() for line in log_text.splitlines() if line.strip()]
    line = lines[-1] if lines else "no output"
    return line if len(line) <= 300 else line[:297] + "..."


class Progress:
    """A tqdm bar per model on a terminal (training epochs + evaluation), plain log lines otherwise.

    The runs happen in subprocesses, so ignite's engine-bound bar (``toolkit.engines.ProgressBar``)
    cannot be attached; the bar follows the epochs the run appends to ``training_history.csv``.
    """

    def __init__(self, name: str, position: str, epochs: int | None, train: bool = True, stream=None):
        self.name, self.position, self.epochs = name, position, epochs
        self.stream = stream or sys.stderr
        self.bar = None
        self.done = 0
        if getattr(self.stream, "isatty", None) and self.stream.isatty():
            from tqdm import tqdm

            total = 1 if not train else None if epochs is None else epochs + 1  # + 1: the evaluation
            self.bar = tqdm(total=total, desc=f"{position} {name}", unit="step", file=self.stream, leave=True)

    def stage(self, text: str, where: str | Path = "") -> None:
        """A new stage; ``where`` (its log or folder) is named in the log lines, not on the bar."""
        if self.bar is not None:
            self.bar.set_postfix_str(text)
        else:
            logger.info("%s %s: %s%s", self.position, self.name, text, f" ({where})" if where else "")

    def epochs_done(self, n: int) -> None:
        if n <= self.done:
            return
        if self.bar is not None:
            self.bar.update(n - self.done)
        else:
            logger.info("%s %s: epoch %d/%s done", self.position, self.name, n, self.epochs or "?")
        self.done = n

    def close(self, text: str) -> None:
        if self.bar is not None:
            if self.bar.total is not None:
                self.bar.update(max(0, self.bar.total - self.bar.n))
            self.bar.set_postfix_str(text)
            self.bar.close()
        else:
            logger.info("%s %s: %s", self.position, self.name, text)


def epochs_written(history: Path) -> int:
    """Epochs a training run has finished: the rows of its ``training_history.csv`` (0 before the first)."""
    try:
        with open(history, encoding="utf-8") as f:
            return max(0, sum(1 for line in f if line.strip()) - 1)
    except OSError:
        return 0


_NOT_SET = object()


def _raise_on_sigterm():
    """Make SIGTERM raise SystemExit while a child runs (main thread only); returns the old handler."""
    if threading.current_thread() is not threading.main_thread():
        return _NOT_SET

    def stop(signum, frame):
        raise SystemExit(128 + signum)

    return signal.signal(signal.SIGTERM, stop)


def run_logged(command: list[str], cwd: Path, log: Path, poll: Callable[[], None] | None = None) -> int:
    """Run ``command`` with stdout and stderr into ``log``; ``poll`` is called about once a second."""
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log, "w", encoding="utf-8") as out:
        out.write("$ " + " ".join(command) + "\n")
        out.flush()
        proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        previous = _raise_on_sigterm()
        try:
            while proc.poll() is None:
                if poll:
                    poll()
                time.sleep(1.0)
        except BaseException:  # Ctrl-C or `kill`: stop the child too, it would train on as an orphan
            proc.terminate()
            proc.wait()
            raise
        finally:
            if previous is not _NOT_SET:  # None: a handler not set from Python, left as the default
                signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
    if poll:
        poll()
    return proc.returncode


def exit_reason(code: int, log: Path) -> str:
    """Why a run ended with ``code``: the signal that killed it, or the error line of its log."""
    if code < 0:
        return f"killed by signal {-code}"
    return error_line(log.read_text(encoding="utf-8", errors="replace"))
