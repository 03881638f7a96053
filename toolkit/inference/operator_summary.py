"""What an operator reads after every `cit infer` run and every watch cycle: ``summary.json`` and a few lines.

``summary.json`` in the output folder is rewritten (temp + rename) at the end of each run, and after each
batch of a watched folder, for schedulers and monitoring to read; the same figures go to stderr as a short
human summary. Both hold counts, times, the backend and the output folder only, never an input's path or
a DICOM attribute (paths and headers may identify patients), so a scheduler's log (cron mail, journald)
may keep them as they are. ``run.json`` beside it says which model and options made the results.
"""

from __future__ import annotations

import datetime
from dataclasses import asdict, dataclass, field
from pathlib import Path

from toolkit.io import atomic_write_json

SUMMARY_NAME = "summary.json"


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


@dataclass
class OperatorSummary:
    """One run (``mode`` folder / pacs) or a watch so far (``mode`` watch: totals since it started)."""

    mode: str
    started: str  # UTC, ISO 8601
    finished: str | None = None
    inputs: int = 0  # rows the run stands for (inputs found, done now or earlier)
    rows: dict[str, int] = field(default_factory=dict)  # by status: ok / error / skipped / missing
    processed_now: int = 0
    done_earlier: int = 0
    ignored: int = 0  # files that get no row (this tool's own outputs, hidden files)
    seconds: float = 0.0
    inputs_per_second: float | None = None  # processed now / time spent loading and predicting them
    backend: str = ""
    precision: str = ""
    exit_code: int | None = None  # None while a watch is running
    pacs: dict = field(default_factory=dict)  # studies found, instances retrieved, reports sent ...

    def lines(self) -> list[str]:
        """The human summary: a few lines, counts and times only."""
        rows = ", ".join(f"{k} {v}" for k, v in sorted(self.rows.items())) or "nothing to do"
        rate = f", {self.inputs_per_second:.2f} inputs/s" if self.inputs_per_second else ""
        lines = [
            f"{self.inputs} inputs: {rows} ({self.processed_now} processed now, {self.done_earlier} done by an "
            f"earlier run) in {self.seconds:.1f} s{rate}; backend {self.backend or '-'} {self.precision}".rstrip()
        ]
        if self.pacs:
            lines.append("PACS: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in self.pacs.items()))
        if self.exit_code is not None:
            lines.append(f"exit code {self.exit_code}")
        return lines


def throughput(processed: int, seconds: float) -> float | None:
    return round(processed / seconds, 3) if processed and seconds > 0 else None


def write_summary(output: str | Path, summary: OperatorSummary) -> Path:
    return atomic_write_json(Path(output) / SUMMARY_NAME, asdict(summary))
