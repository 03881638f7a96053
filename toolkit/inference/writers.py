"""Durable result files: a per-process journal appended per batch, and final CSV / JSONL written atomically.

A run appends each finished batch to its journal (``parts/predictions.part<rank>.jsonl``) and
flushes + fsyncs it, so a killed run loses at most the batch in flight; a rerun reads the journals
to skip what is done. At the end the journals are merged into ``predictions.csv`` and
``predictions.jsonl``, each written atomically (``toolkit.io``), so readers never see a half-written
file.

CSV cells that a spreadsheet would evaluate as a formula (text starting with ``=``, ``+``, ``-``, ``@``, a
tab or a carriage return: file names and DICOM values are chosen by whoever made the archive) get a
leading ``'`` (OWASP "CSV injection"); ``predictions.jsonl`` keeps every value exactly.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from toolkit.io import atomic_write_bytes, csv_text, float_text

logger = logging.getLogger(__name__)

PARTS_DIR = "parts"
_PART_NAME = re.compile(r"predictions\.part(\d+)\.jsonl")


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
        not_rows = 0
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if not line.endswith("\n"):
                    break  # torn final line of a killed run
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    not_rows += 1
                    continue
                if (
                    not isinstance(record, dict)
                    or not isinstance(record.get("key"), str)
                    or not isinstance(record.get("status"), str)
                ):
                    not_rows += 1  # valid JSON but not a row (e.g. `{}` from an editor or a disk error)
                    continue
                records[record["key"]] = record
        if not_rows:
            logger.warning(
                "skipped %d line(s) of %s/%s that are not result rows; their inputs are processed again",
                not_rows,
                path.parent.name,
                path.name,
            )
    return records


def all_part_paths(output_dir: str | os.PathLike) -> list[Path]:
    """Every journal in ``output_dir`` (runs with other process counts included), in rank order."""
    parts = Path(output_dir) / PARTS_DIR
    found = (
        [p for p in parts.glob("predictions.part*.jsonl") if _PART_NAME.fullmatch(p.name)]
        if parts.is_dir()
        else []
    )
    return sorted(found, key=lambda p: int(_PART_NAME.fullmatch(p.name).group(1)))


def write_final_outputs(
    rows: Sequence[dict], columns: Sequence[str], csv_path: str | os.PathLike, jsonl_path: str | os.PathLike
) -> None:
    """Write ``rows`` as CSV (only ``columns``, in that order) and as JSON lines, each atomically."""
    text = csv_text([list(columns), *([_csv_value(row.get(c)) for c in columns] for row in rows)])
    # backslashreplace: a lone surrogate (undecodable bytes of a file name) must not lose the whole result
    atomic_write_bytes(csv_path, text.encode("utf-8", "backslashreplace"))
    atomic_write_bytes(
        jsonl_path,
        "".join(json.dumps({c: row.get(c) for c in columns}) + "\n" for row in rows).encode("utf-8"),
    )


def _csv_value(value):
    if value is None:
        return ""
    if isinstance(value, float):
        return float_text(value)
    return value
