"""`cit infer --watch` as a real process on a real folder: files arrive, one is still being copied, one is
deleted before it is read, SIGTERM stops it cleanly, and a restart classifies only what is new."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from infer_helpers import PYTHON, infer_args, png_bytes, read_csv, subprocess_env

from toolkit.cli import main
from toolkit.inference.locking import LOCK_NAME
from toolkit.inference.operator_summary import SUMMARY_NAME
from toolkit.inference.runner import EXIT_OK
from toolkit.inference.writers import all_part_paths, read_journals

SETTLE = 1.5  # seconds a file must stay unchanged; the slow copy below grows more often than that
POLL = 0.2


def _start(bundle_dir, tiny_ckpt, drop: Path, out: Path, log: Path) -> subprocess.Popen:
    args = infer_args(bundle_dir, tiny_ckpt, drop, out, "--watch")
    args += ["--poll-seconds", str(POLL), "--settle-seconds", str(SETTLE)]
    with open(log, "wb") as stderr:
        proc = subprocess.Popen([PYTHON, "-m", "toolkit", *args], env=subprocess_env(), stderr=stderr)
    _wait_for(lambda: "watching" in log.read_text() or proc.poll() is not None, 60)
    assert proc.poll() is None, log.read_text()
    return proc


def _wait_for(condition, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _journal(out: Path) -> list[dict]:
    """Every journal row, in order (a path twice would be a file read twice)."""
    return list(read_journals(all_part_paths(out)).values())


def _paths(out: Path) -> list[str]:
    return [r["path"] for r in _journal(out)]


def _stop(proc: subprocess.Popen, log: Path) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0, log.read_text()


@pytest.mark.slow
def test_watch_settles_skips_deleted_stops_on_sigterm_and_resumes(bundle_dir, tiny_ckpt, tmp_path, capsys):
    drop, out = tmp_path / "drop", tmp_path / "out"
    drop.mkdir()
    log = tmp_path / "watch1.log"
    proc = _start(bundle_dir, tiny_ckpt, drop, out, log)
    try:
        (drop / "a.png").write_bytes(png_bytes(1))
        (drop / "sub").mkdir()
        (drop / "sub" / "b.png").write_bytes(png_bytes(2))
        (drop / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 50)
        (drop / "gone.png").write_bytes(png_bytes(3))
        slow = png_bytes(4, (64, 64))
        step = len(slow) // 100
        chunks = [slow[i : i + step] for i in range(0, len(slow), step)]
        # a copy in progress: grows every 0.2 s (for up to ~20 s) until the other files have their rows
        with open(drop / "slow.png", "wb") as f:
            f.write(chunks.pop(0))
            f.flush()
            time.sleep(0.3)
            (drop / "gone.png").unlink()  # deleted before it settled: no row, no error
            while len(_journal(out)) < 3:
                assert len(chunks) > 1, "the files that settled were not read within ~20 s"
                time.sleep(0.2)
                f.write(chunks.pop(0))
                f.flush()
            assert "slow.png" not in _paths(out), "a file still being written must not be read"
            f.write(b"".join(chunks))
        _wait_for(lambda: "slow.png" in _paths(out), 20)
        (drop / "a.png").unlink()  # deleted after it was read: keeps its row
    finally:
        if proc.poll() is None:
            _stop(proc, log)
    text = log.read_text()
    assert "new: ok" in text and "stopped;" in text, text
    assert not any(name in text for name in ("a.png", "b.png", "broken.png", "slow.png")), text
    assert not (out / LOCK_NAME).exists()
    summary = json.loads((out / SUMMARY_NAME).read_text())  # the watch's totals, final once it stopped
    assert summary["mode"] == "watch" and summary["exit_code"] == EXIT_OK and summary["finished"]
    assert summary["rows"] == {"ok": 3, "error": 1} and summary["processed_now"] == 4
    assert summary["inputs_per_second"] > 0
    journal = _journal(out)
    assert sorted(r["path"] for r in journal) == ["a.png", "broken.png", "slow.png", "sub/b.png"]
    status = {r["path"]: r["status"] for r in read_csv(out / "predictions.csv")}
    assert status == {"a.png": "ok", "broken.png": "error", "slow.png": "ok", "sub/b.png": "ok"}

    # a restart (in this process: no second interpreter start-up; a real SIGTERM to this process) reads only
    # the file that arrived while it was stopped
    (drop / "c.png").write_bytes(png_bytes(5))
    feeder = threading.Thread(target=_stop_when_read, args=(out,), daemon=True)
    feeder.start()
    args = infer_args(bundle_dir, tiny_ckpt, drop, out, "--watch")
    assert main([*args, "--poll-seconds", str(POLL), "--settle-seconds", str(SETTLE)]) == 0
    feeder.join()
    text = capsys.readouterr().err
    assert text.count("new:") == 1 and "1 new: ok 1" in text, text
    assert _journal(out)[: len(journal)] == journal and _paths(out)[len(journal) :] == ["c.png"]
    rows = read_csv(out / "predictions.csv")
    assert sorted(r["path"] for r in rows) == ["a.png", "broken.png", "c.png", "slow.png", "sub/b.png"]
    assert not (out / LOCK_NAME).exists()


def _stop_when_read(out: Path) -> None:
    """Beside the in-process watch: SIGTERM once c.png has its row."""
    try:
        _wait_for(lambda: "c.png" in _paths(out), 30)
    finally:  # only to the watch's own handler: the default one would end pytest
        _wait_for(lambda: signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None), 30)
        os.kill(os.getpid(), signal.SIGTERM)
