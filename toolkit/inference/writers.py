"""Durable result files: a per-process journal appended per batch, and final CSV / JSONL written atomically.

A run appends each finished batch to its journal (``parts/predictions.part<rank>.jsonl``) and
flushes + fsyncs it, so a killed run loses at most the batch in flight; a rerun reads the journals
to skip what is done. At the end the journals are merged into ``predictions.csv`` and
``predictions.jsonl``, each written atomically (``toolkit.io``), so readers never see a half-written
file.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from toolkit.io import atomic_write_text

PARTS_DIR = "parts"


def part_path(output_dir: str | os.PathLike, rank: int) -> Path:
    """The journal file of process ``rank``."""
    return Path(output_dir) / PARTS_DIR / f"predictions.part{rank}.jsonl"


class ResultJournal:
    """Append-only JSON-lines journal; every :meth:`append` is flushed and fsynced before returning."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _drop_torn_tail(self.path)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def append(self, records: Iterable[dict]) -> None:
        lines = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
        if lines:
            self._file.write(lines)
            self._file.flush()
            os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> ResultJournal:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _drop_torn_tail(path: Path) -> None:
    """Cut a last line left incomplete by a kill during a write, so appends start on a fresh line."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as f:
        data = f.read()
        if data.endswith(b"\n"):
            return
        f.truncate(data.rfind(b"\n") + 1)


def read_journals(paths: Sequence[str | os.PathLike]) -> dict[str, dict]:
    """Records by key from the given journals; later lines win (a retried input replaces its old row)."""
    records: dict[str, dict] = {}
    for path in paths:
        path = Path(path)
        if not path.is_file():
            continue
        with open(path, encoding="utf-8") as f:
            for line in f:
                if not line.endswith("\n"):
                    break  # torn final line of a killed run
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                records[record["key"]] = record
    return records


def all_part_paths(output_dir: str | os.PathLike) -> list[Path]:
    """Every journal in ``output_dir`` (runs with other process counts included), in rank order."""
    parts = Path(output_dir) / PARTS_DIR
    found = list(parts.glob("predictions.part*.jsonl")) if parts.is_dir() else []
    return sorted(found, key=lambda p: int(p.name[len("predictions.part"):-len(".jsonl")] or 0))


def write_final_outputs(rows: Sequence[dict], columns: Sequence[str], csv_path: str | os.PathLike,
                        jsonl_path: str | os.PathLike) -> None:
    """Write ``rows`` as CSV (only ``columns``, in that order) and as JSON lines, each atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: _csv_value(row.get(c)) for c in columns})
    atomic_write_text(csv_path, buffer.getvalue())
    atomic_write_text(jsonl_path, "".join(json.dumps({c: row.get(c) for c in columns}) + "\n" for row in rows))


def _csv_value(value):
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6f}"
    return value
