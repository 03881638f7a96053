"""`cit infer` with a PACS as input and / or destination: retrieve into the cache, run, store the SRs."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from toolkit.inference.discovery import DICOM_PARSE_ERRORS, InputItem
from toolkit.inference.locking import LockedError, OutputLock
from toolkit.inference.naming import inside
from toolkit.inference.operator_summary import write_summary
from toolkit.inference.pacs.common import (
    CACHE_FOLDER,
    EXIT_NOT_STORED,
    PACS_FOLDER,
    STORE_LEDGER,
    PacsError,
    PacsOptions,
    Retrieval,
    is_dimse_url,
    is_pacs_url,
    short_reason,
)
from toolkit.io import atomic_write_json

# What a report says, digested to tell whether it changed since it was stored (its times of writing,
# which differ on every run, are left out).
_CONTENT = ("SOPInstanceUID", "ContentSequence", "CurrentRequestedProcedureEvidenceSequence")


def report_digest(path: Path) -> str:
    """SHA-256 of what a report says (its UID, content tree, evidence), without its times of writing."""
    import pydicom

    report = pydicom.dcmread(path)
    said = pydicom.Dataset()
    for keyword in _CONTENT:
        if keyword in report:
            setattr(said, keyword, report[keyword].value)
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, said, implicit_vr=True, little_endian=True)
    return hashlib.sha256(buffer.getvalue()).hexdigest()


def store_reports(pacs, reports: Sequence[Path], ledger_path: Path) -> tuple[int, list[str]]:
    """Send ``reports`` not yet stored with this content at ``pacs`` (a ``DicomwebPacs`` or ``DimsePacs``);
    returns how many were sent and one line per failure.

    Each success is recorded in ``ledger_path`` at once, so a run stopped midway sends no report twice."""
    import pydicom

    try:
        ledger = json.loads(ledger_path.read_text())
    except (OSError, ValueError):  # absent or damaged: every report is sent (a PACS keeps one per UID)
        ledger = {}
    sent, failures = 0, []
    for path in reports:
        try:
            digest = report_digest(path)
            if ledger.get(path.name) == {"url": pacs.url, "digest": digest}:
                continue
            pacs.store(pydicom.dcmread(path))
        except (OSError, ValueError, *DICOM_PARSE_ERRORS) as exc:  # requests' errors are OSErrors
            failures.append(f"DICOM SR {path.stem} not stored in the PACS: {short_reason(exc)}")
            continue
        ledger[path.name] = {"url": pacs.url, "digest": digest}
        atomic_write_json(ledger_path, ledger)
        sent += 1
    return sent, failures


def connect(url: str, options: PacsOptions):
    """The PACS at ``url``: ``dicomweb+http(s)://...`` or ``dimse://AET@HOST:PORT``."""
    if is_dimse_url(url):
        from toolkit.inference.pacs.dimse import DimsePacs

        return DimsePacs(url, options)
    from toolkit.inference.pacs.dicomweb import DicomwebPacs

    return DicomwebPacs(url, options)


# ---------------------------------------------------------------------------------------------
# the run


def retrieve_input(options, pacs: PacsOptions):
    """Query the PACS ``options.input`` and retrieve the studies into ``--output/pacs/cache``.

    Returns ``(options, retrieval, None)``: the options to run (the cache as input, one error row per
    instance not retrieved), or ``(options, retrieval or None, exit code)`` when there is nothing to run."""
    from toolkit.inference.runner import EXIT_INPUTS_FAILED, EXIT_NO_INPUTS

    source = connect(options.input, pacs)
    studies = source.find_studies(pacs.query)
    if not studies:
        print("cit infer: no study in the PACS matches the query; nothing to do", file=sys.stderr)
        return options, None, EXIT_NO_INPUTS
    cache = inside(Path(options.output), CACHE_FOLDER)
    retrieval = source.retrieve(studies, cache, pacs.cache_max_bytes, pacs.query.modalities)
    retrieval.studies = len(studies)
    for line in retrieval.failures:
        print(f"cit infer: {line}", file=sys.stderr)
    print(
        f"cit infer: {len(studies)} studies, {retrieval.instances} instances retrieved "
        f"({retrieval.bytes / 2**20:.1f} MiB; {len(retrieval.not_retrieved)} not retrieved, error rows; "
        f"{retrieval.left_out} reports or other modalities left out)",
        file=sys.stderr,
    )
    if not retrieval.instances and not retrieval.not_retrieved:
        print("cit infer: no instance of these studies passes the filters; nothing to do", file=sys.stderr)
        return options, retrieval, EXIT_NO_INPUTS if not retrieval.failures else EXIT_INPUTS_FAILED
    cache.mkdir(parents=True, exist_ok=True)  # the input of the run, even when no instance came
    failed = not_retrieved_inputs(retrieval, cache)
    return dataclasses.replace(options, input=str(cache), decided_inputs=failed), retrieval, None


def not_retrieved_inputs(retrieval: Retrieval, cache: Path) -> list[InputItem]:
    """One error input per instance the PACS did not deliver, at the path it would have in ``cache``.
    Size and mtime 0: the retrieved file (mtime from its bytes, size > 0) never shares its resume key,
    so a rerun that retrieves it classifies it, and its row replaces this one."""
    items = []
    for (study, series, sop), reason in retrieval.not_retrieved:
        path = f"{study}/{series}/{sop}.dcm"
        items.append(
            InputItem(
                path=path,
                abs_path=str(cache / path),
                kind="dicom",
                study_instance_uid=study,
                series_instance_uid=series,
                sop_instance_uid=sop,
                status="error",
                reason=f"not retrieved from the PACS: {reason}",
            )
        )
    return items


def _record(output: Path, operator, figures: dict, code: int) -> None:
    """summary.json of the run (``operator``: its ``OperatorSummary``) with the PACS figures and the final
    exit code."""
    if operator is not None:
        operator.mode, operator.pacs, operator.exit_code = "pacs", figures, code
        write_summary(output, operator)


def run_with_pacs(options, pacs: PacsOptions) -> int:
    """`cit infer` with a PACS as ``options.input`` and / or ``pacs.store_sr``; returns the exit code.

    ``options``: a ``toolkit.inference.runner.InferenceOptions``. One process only: under torchrun every
    rank would retrieve and store the same studies."""
    from toolkit.inference.runner import (
        EXIT_INPUTS_FAILED,
        EXIT_LOCKED,
        EXIT_OK,
        run_inference,
    )

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise PacsError("a PACS input or --store-sr runs in one process, not under torchrun")
    output = Path(options.output)
    store = connect(pacs.store_sr, pacs) if pacs.store_sr else None
    if store is not None:
        options = dataclasses.replace(options, dicom_sr=True)
    lock = OutputLock(output / PACS_FOLDER)
    try:
        lock.acquire()
    except LockedError as exc:
        print(f"cit infer: {exc}", file=sys.stderr)
        return EXIT_LOCKED
    try:
        retrieval = None
        if is_pacs_url(options.input):
            options, retrieval, code = retrieve_input(options, pacs)
            if code is not None:
                return code
        summary = run_inference(options)
        code = summary.exit_code
        if code not in (EXIT_OK, EXIT_INPUTS_FAILED):  # rows missing, locked, refused: nothing more to do
            return code
        if retrieval is not None and retrieval.failures:
            code = EXIT_INPUTS_FAILED
        figures = {}
        if retrieval is not None:
            figures.update(
                studies=retrieval.studies,
                instances_retrieved=retrieval.instances,
                instances_not_retrieved=len(retrieval.not_retrieved),
                left_out=retrieval.left_out,
            )
        if store is not None:
            sent, failures = store_reports(store, summary.sr_paths, inside(output, STORE_LEDGER))
            for line in failures:
                print(f"cit infer: {line} (kept in sr/; the next run sends it again)", file=sys.stderr)
            already = len(summary.sr_paths) - sent - len(failures)
            print(f"cit infer: DICOM SR: {sent} sent, {already} already in the PACS", file=sys.stderr)
            figures.update(
                reports_sent=sent, reports_already_stored=already, reports_not_stored=len(failures)
            )
            if failures and code == EXIT_OK:
                code = EXIT_NOT_STORED
        if retrieval is not None and not pacs.keep_cache:
            shutil.rmtree(inside(output, CACHE_FOLDER), ignore_errors=True)
        _record(output, summary.operator, figures, code)
        return code
    finally:
        lock.release()
