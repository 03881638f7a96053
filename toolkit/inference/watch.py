"""`cit infer --watch`: a drop folder watched by polling, each new file classified once it has settled.

The folder is listed every ``poll_seconds`` (``os.stat`` only). A file counts once its size and mtime
have stayed the same for ``settle_seconds``: a partial copy that is still growing is never read. Settled
files go through the ordinary run, one batch at a time (discovery per file, ``runner.process_items``, the same
journal ``parts/predictions.part0.jsonl``, fingerprint and lock), so resuming, one row per input and
the refusal to mix models hold as in a plain run; nothing else records what was done. After each batch
``predictions.csv`` / ``.jsonl`` are rewritten (temp + rename) from the journal: one row per input path,
the newest version of a file winning, a file deleted after it was processed keeping its row; a file
deleted before it settled or was read gets no row.

Polling, not inotify (``watchdog``): drop folders are often network shares (NFS, SMB), where inotify sees
no change made by another machine; and a settle check needs stat calls anyway. One listing per poll
is cheap next to classifying the files.

SIGTERM / SIGINT set a flag: the batch in flight is finished (its rows journalled and fsynced) or, if its
loader dies on the signal, abandoned whole; then the final files are written, the lock is released and
the exit code is 0.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from toolkit.inference.discovery import OUTPUT_ENTRIES, InputItem, discover_inputs, relative_path, walk_files
from toolkit.inference.fingerprint import run_identity
from toolkit.inference.locking import LOCK_NAME, LockedError, OutputLinkError, OutputLock, refuse_links
from toolkit.inference.operator_summary import (
    SUMMARY_NAME,
    OperatorSummary,
    throughput,
    utc_now,
    write_summary,
)
from toolkit.inference.privacy import Pseudonymiser
from toolkit.inference.runner import (
    EXIT_LOCKED,
    EXIT_OK,
    EXIT_RESUME_REFUSED,
    EXIT_RUN_FAILED,
    InferenceOptions,
    check_paths,
    discard_results,
    load_bundle_for_run,
    output_columns,
    process_items,
    resolve_device,
    resume_refusal,
    with_backend,
    write_run_file,
)
from toolkit.inference.writers import all_part_paths, part_path, read_journals, write_final_outputs

PREFIX = "cit infer --watch:"


@dataclass
class WatchOptions:
    poll_seconds: float  # how often the folder is listed
    settle_seconds: float  # how long size and mtime must stay the same before a file is read


class Source(Protocol):
    """What fills the watched folder from elsewhere (``toolkit.inference.pacs.watch``: a PACS's new studies)."""

    def fetch(self) -> None:
        """Put what is new into the folder (called before each listing)."""

    def processed(self, paths: list[Path]) -> None:
        """``paths`` have their rows journalled (they may now be removed from the folder)."""


def _say(text: str) -> None:
    print(f"{PREFIX} {text}", file=sys.stderr, flush=True)


class _StopFlag:
    """Set by SIGTERM / SIGINT; the watch loop checks it between batches and wakes from its wait."""

    def __init__(self):
        self.event = threading.Event()
        self.saved = {}

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.saved[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, handler in self.saved.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        self.event.set()

    def __bool__(self) -> bool:
        return self.event.is_set()


def _version(record: dict) -> tuple[tuple, int, int]:
    """``((path, frame, raw digest), size, mtime_ns)`` of a journal row, from its key
    ``path|size|mtime_ns|frame[|digest]`` (the path itself may hold '|')."""
    rest = record["key"][len(record["path"]) + 1 :].split("|")
    return (record["path"], rest[2], rest[3] if len(rest) > 3 else ""), int(rest[0]), int(rest[1])


class _Settling:
    """What each file looked like and since when: a file is settled once unchanged for ``seconds``."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.seen: dict[Path, tuple[int, int, float]] = {}  # path -> size, mtime_ns, first seen so

    def settled(self, paths: list[Path], now: float) -> list[tuple[Path, os.stat_result]]:
        current, ready = {}, []
        for path in paths:
            try:
                st = path.stat()
            except OSError:  # deleted (or moved) meanwhile: forgotten, no row
                continue
            size, mtime, since = self.seen.get(path, (-1, -1, now))
            if (size, mtime) != (st.st_size, st.st_mtime_ns):
                since = now
            current[path] = (st.st_size, st.st_mtime_ns, since)
            if now - since >= self.seconds:
                ready.append((path, st))
        self.seen = current
        return ready


class _Watcher:
    def __init__(
        self, options: InferenceOptions, watch: WatchOptions, stop: _StopFlag, lock: OutputLock, source=None
    ):
        self.options, self.watch, self.stop, self.lock, self.source = options, watch, stop, lock, source
        self.root = Path(options.input)
        self.output = Path(options.output)
        self.device = resolve_device(options.device, 0)
        self.bundle = load_bundle_for_run(options, self.device)
        self.options = with_backend(options, self.bundle, self.device)
        self.pseudonym = Pseudonymiser.for_output(self.output) if options.pseudonymise_paths else None
        self.settling = _Settling(watch.settle_seconds)
        self.done: dict[str, dict] = {}
        self.handled: set[str] = set()  # keys processed by this process (--retry-errors retries once)
        self.root_missing = False
        self.known: set | None = None  # see _known
        self.summary = OperatorSummary(
            mode="watch", started=utc_now(), backend=self.options.backend, precision=self.options.precision
        )
        self.started = time.monotonic()
        self.busy_seconds = 0.0  # spent classifying batches

    def start(self) -> str | None:
        """Check the journal against this run's fingerprint (a refusal's message, or None) and write run.json."""
        identity = run_identity(self.bundle, self.options)
        if self.options.restart:
            discard_results(self.output)
        self.done = read_journals(all_part_paths(self.output))
        if self.done and {r.get("fingerprint") for r in self.done.values()} != {identity["fingerprint"]}:
            return resume_refusal(self.output, identity)
        write_run_file(self.output, identity)
        self.stamp = {
            "fingerprint": identity["fingerprint"],
            "model_sha256": identity["weights_sha256"],
            "backend": self.options.backend,
            "precision": self.options.precision,
        }
        return None

    def _pending(self, key: str) -> bool:
        record = self.done.get(key)
        if record is None:
            return True
        return self.options.retry_errors and record["status"] == "error" and key not in self.handled

    def _known(self) -> set[tuple[str, int, int]]:
        """``(path, size, mtime_ns)`` of the files the journal has a final row for (kept until it changes)."""
        if self.known is None:
            self.known = {(r["path"], *_version(r)[1:]) for k, r in self.done.items() if not self._pending(k)}
        return self.known

    def _shown(self, path: Path) -> str:
        shown = relative_path(path, self.root)["path"]
        return self.pseudonym(shown) if self.pseudonym else shown

    def poll(self) -> list[Path]:
        """Settled files below the folder not yet in the journal (by path, size and mtime)."""
        if not self.root.is_dir():
            if not self.root_missing:
                _say(f"--input {self.root} is not there (share unmounted?); waiting for it")
            self.root_missing = True
            return []
        self.root_missing = False
        paths, _ = walk_files(self.root, exclude=self.output)
        known = self._known()
        fresh, done = [], []
        for path, st in self.settling.settled(paths, time.monotonic()):
            (done if (self._shown(path), st.st_size, st.st_mtime_ns) in known else fresh).append(path)
        if done and self.source is not None:  # e.g. instances of a study retrieved again
            self.source.processed(done)
        return fresh

    def items_of(self, paths: list[Path]) -> list[InputItem]:
        """Work items of ``paths``, discovered one file at a time (only the new files' headers are read)."""
        items = []
        for path in paths:
            found, _ = discover_inputs(path, self.options.filters, frames=self.options.frames)
            for item in found:  # discovered alone, the item's path is its name: made relative to the folder
                named = relative_path(path, self.root)
                item.path, item.raw_path_digest = named["path"], named["raw_path_digest"]
                if self.pseudonym:
                    item.path = self.pseudonym(item.path)
                if self._pending(item.key):
                    items.append(item)
        return items

    def run_batch(self, items: list[InputItem]) -> Counter:
        """Classify ``items``; their rows are journalled by the ordinary run loop. Returns counts by status."""
        journal = part_path(self.output, 0)
        try:
            process_items(items, self.bundle, self.options, self.device, journal, self.lock, 0, 1, self.stamp)
        except RuntimeError:
            if not self.stop:
                raise
            # the signal reached the loader's workers too (Ctrl-C in a terminal): the batch is abandoned;
            # whatever batches were journalled stand, the rest is done by the next run
        self.done = read_journals(all_part_paths(self.output))
        self.handled.update(item.key for item in items)
        self.known = None
        return Counter(self.done[i.key]["status"] for i in items if i.key in self.done)

    def write_outputs(self) -> Counter:
        """predictions.csv / .jsonl from the journal: one row per input path, the newest version winning.
        Returns the rows' counts by status."""
        latest: dict[tuple, dict] = {}
        for record in self.done.values():  # journal order: a newer version of a file comes later
            latest[_version(record)[0]] = record
        rows = sorted(
            latest.values(), key=lambda r: (r["path"], -1 if r.get("frame") is None else r["frame"])
        )
        csv_path = self.output / "predictions.csv"
        write_final_outputs(
            rows, output_columns(self.bundle, self.options), csv_path, self.output / "predictions.jsonl"
        )
        return Counter(row["status"] for row in rows)

    def record(self, rows: Counter, exit_code: int | None = None) -> None:
        """Bring ``summary.json`` up to date: the watch's totals so far (``exit_code`` once it stops)."""
        summary = self.summary
        summary.rows, summary.inputs = dict(rows), sum(rows.values())
        summary.done_earlier = max(0, summary.inputs - summary.processed_now)
        summary.seconds = round(time.monotonic() - self.started, 3)
        summary.inputs_per_second = throughput(summary.processed_now, self.busy_seconds)
        if exit_code is not None:
            summary.exit_code, summary.finished = exit_code, utc_now()
        write_summary(self.output, summary)

    def loop(self) -> None:
        batch_size = max(1, self.options.batch_size)
        while not self.stop:
            if self.source is not None:
                self.source.fetch()
            fresh = self.poll()
            while fresh and not self.stop:
                batch, fresh = fresh[:batch_size], fresh[batch_size:]
                items = self.items_of(batch)
                if not items:
                    continue
                began = time.monotonic()
                counts = self.run_batch(items)
                spent = time.monotonic() - began
                self.busy_seconds += spent
                self.summary.processed_now += len(items)
                rows = self.write_outputs()
                self.record(rows)
                if self.source is not None:  # only files whose rows are journalled (a batch may be abandoned)
                    journalled = {item.abs_path for item in items if item.key in self.done}
                    self.source.processed([path for path in batch if os.path.abspath(path) in journalled])
                by_status = ", ".join(f"{k} {counts.get(k, 0)}" for k in ("ok", "error", "skipped"))
                _say(
                    f"{len(items)} new: {by_status} in {spent:.1f} s; {sum(rows.values())} rows in "
                    f"{self.output / 'predictions.csv'}"
                )
            self.stop.event.wait(self.watch.poll_seconds)


def watch_folder(options: InferenceOptions, watch: WatchOptions, source: Source | None = None) -> int:
    """Run `cit infer --watch` until SIGTERM / SIGINT; returns the exit code (0 on a clean stop).

    ``source``: fills ``options.input`` before each listing (a PACS's new studies), told what was processed."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("--watch runs in one process, not under torchrun")
    check_paths(options)
    if not os.path.isdir(options.input):
        raise ValueError(f"--watch needs a folder as --input, not the file {options.input}")
    options = dataclasses.replace(options, progress=False)  # one line per batch instead of a bar
    stop = _StopFlag()
    stop.install()
    lock = OutputLock(options.output)
    try:
        lock.acquire()
        refuse_links(options.output, OUTPUT_ENTRIES - {LOCK_NAME})
    except LockedError as exc:
        stop.restore()
        _say(str(exc))
        return EXIT_LOCKED
    except OutputLinkError as exc:
        lock.release()
        stop.restore()
        _say(str(exc))
        return EXIT_RUN_FAILED
    try:
        watcher = _Watcher(options, watch, stop, lock, source)
        if watcher.bundle.spatial_dims == 3:
            raise ValueError(
                "--watch classifies files one by one: a 3D model's DICOM series are not supported"
            )
        refusal = watcher.start()
        if refusal:
            _say(refusal)
            return EXIT_RESUME_REFUSED
        _say(
            f"watching {options.input} every {watch.poll_seconds:g} s (files settle for "
            f"{watch.settle_seconds:g} s); stop with SIGTERM or Ctrl-C"
        )
        watcher.loop()
        watcher.record(watcher.write_outputs(), EXIT_OK)
        _say("stopped; " + "; ".join(watcher.summary.lines()))
        _say(
            f"results: {Path(options.output) / 'predictions.csv'} (figures: {Path(options.output) / SUMMARY_NAME})"
        )
        return EXIT_OK
    finally:
        lock.release()
        stop.restore()
