"""`cit infer --watch --input dicomweb+...`: a DICOMweb PACS watched for new studies.

Each poll asks QIDO-RS for the studies of the query with their NumberOfStudyRelatedInstances. A study
counts once that number has stayed the same for ``--settle-seconds`` (a modality may still be sending it,
as a file may still be copied into a drop folder); it is then retrieved (WADO-RS) into the cache folder
that the ordinary watch (``toolkit.inference.watch``) lists, and each instance is removed from the cache
once its row is journalled (the watch keeps the rows of files removed after they were read). A study whose
count grows later is retrieved again: the instances already classified have the same bytes, hence the same
resume key, and are not classified twice. ``pacs/watched-studies.json`` records the count retrieved per
study, so a restarted watch retrieves only what is new.

A study with instances that could not be retrieved is tried again at the next polls, at most
``MAX_TRIES`` times, then left out with one line (a restart of the watch tries again). Only UIDs are
printed, never patient data.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path

from toolkit.inference.naming import inside
from toolkit.inference.pacs.common import CACHE_FOLDER, PACS_FOLDER, PacsError, PacsOptions
from toolkit.io import atomic_write_json

LEDGER = f"{PACS_FOLDER}/watched-studies.json"
MAX_TRIES = 3


def _say(text: str) -> None:
    print(f"cit infer --watch: {text}", file=sys.stderr, flush=True)


class StudyFeeder:
    """The watch's :class:`~toolkit.inference.watch.Source` for a DICOMweb PACS (module docstring)."""

    def __init__(self, pacs, options: PacsOptions, output: Path, settle_seconds: float):
        self.pacs, self.options, self.settle_seconds = pacs, options, settle_seconds
        self.cache = inside(output, CACHE_FOLDER)
        self.ledger_path = inside(output, LEDGER)
        self.retrieved: dict[str, int] = self._read_ledger()
        self.seen: dict[str, tuple[int | None, float]] = {}  # study -> count, since when unchanged
        self.tries: dict[str, int] = {}
        self.unreachable = False

    def _read_ledger(self) -> dict[str, int]:
        try:
            ledger = json.loads(self.ledger_path.read_text())
            return {str(k): int(v) for k, v in ledger.items()}
        except (OSError, ValueError, TypeError, AttributeError):  # absent or damaged: retrieved anew
            return {}

    def settled(self, counts: dict[str, int | None], now: float) -> list[str]:
        """Studies to retrieve: their instance count unchanged for ``settle_seconds`` and not the count
        retrieved (a server that gives no count: each study once, after it was listed for ``settle_seconds``)."""
        ready, seen = [], {}
        for study, count in counts.items():
            previous = self.seen.get(study)
            since = previous[1] if previous and previous[0] == count else now
            seen[study] = (count, since)
            needed = study not in self.retrieved or (count is not None and count != self.retrieved[study])
            if needed and now - since >= self.settle_seconds and self.tries.get(study, 0) < MAX_TRIES:
                ready.append(study)
        self.seen = seen
        return sorted(ready)

    def fetch(self) -> None:
        try:
            counts = self.pacs.study_instance_counts(self.options.query)
        except PacsError as exc:  # the PACS is down for a while: the watch goes on and asks again
            if not self.unreachable:
                _say(f"{exc}; asking again at every poll")
            self.unreachable = True
            return
        if self.unreachable:
            _say("the PACS answers again")
        self.unreachable = False
        for study in self.settled(counts, time.monotonic()):
            self._retrieve(study, counts[study])

    def _retrieve(self, study: str, count: int | None) -> None:
        try:
            done = self.pacs.retrieve(
                [study], self.cache, self.options.cache_max_bytes, self.options.query.modalities
            )
            failures = done.failures
        except PacsError as exc:  # e.g. the study alone exceeds the cache limit
            done, failures = None, [f"study {study}: {exc}"]
        if failures:
            self.tries[study] = self.tries.get(study, 0) + 1
            for line in failures:
                _say(line)
            if self.tries[study] >= MAX_TRIES:
                _say(f"study {study}: left out after {MAX_TRIES} tries; restart the watch to try again")
            return
        self.tries.pop(study, None)
        self.retrieved[study] = count or 0
        atomic_write_json(self.ledger_path, self.retrieved)
        _say(f"study {study}: {done.instances} instances retrieved")

    def processed(self, paths: list[Path]) -> None:
        if self.options.keep_cache:
            return
        for path in paths:
            try:
                os.unlink(path)
            except OSError:  # already gone: nothing to free
                pass


def watch_pacs(options, pacs: PacsOptions, watch) -> int:
    """`cit infer --watch` on a DICOMweb ``options.input`` (a ``runner.InferenceOptions``); ``watch``: the
    ``toolkit.inference.watch.WatchOptions`` given (its settle time applies to studies). Returns the exit code."""
    from toolkit.inference.pacs.run import connect
    from toolkit.inference.watch import WatchOptions, watch_folder

    output = Path(options.output)
    feeder = StudyFeeder(connect(options.input, pacs), pacs, output, watch.settle_seconds)
    feeder.cache.mkdir(parents=True, exist_ok=True)
    files = WatchOptions(
        watch.poll_seconds, settle_seconds=0.0
    )  # cached instances are written whole (rename)
    return watch_folder(dataclasses.replace(options, input=str(feeder.cache)), files, feeder)
