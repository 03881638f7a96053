"""A PACS over DIMSE (pynetdicom), for PACS without DICOMweb: ``dimse://AET@HOST:PORT``.

C-FIND (Study Root) finds the studies, then each study's series with their Modality; C-GET retrieves
a series, its instances arriving as C-STORE requests on the same association (C-GET rather than
C-MOVE: no port of ours for the PACS to call back, nothing to open in a hospital's firewall);
C-STORE sends a report. Our AE title is ``CIT_PACS_AET`` (default ``CIT``); the PACS must know it.
DIMSE has no credentials and no TLS here: use it on a trusted network only (docs/security.md).
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Sequence
from pathlib import Path

from toolkit.inference.discovery import DICOM_PARSE_ERRORS, quiet_dicom_warnings
from toolkit.inference.naming import safe_uid, uid_file_stem
from toolkit.inference.pacs.common import PacsError, PacsOptions, Retrieval, StudyQuery, cache_instance

CALLING_AET_ENV = "CIT_PACS_AET"
_URL = re.compile(r"dimse://([^\\@/\x00-\x1f]{1,16})@([A-Za-z0-9.-]+|\[[0-9A-Fa-f:]+\]):([0-9]{1,5})/?")
_PENDING = (0xFF00, 0xFF01)
_OUT_OF_RESOURCES = 0xA702  # C-STORE status "refused: out of resources" (the cache limit)


def parse_url(url: str) -> tuple[str, str, int]:
    """``(called AE title, host, port)`` of ``dimse://AET@HOST:PORT``."""
    match = _URL.fullmatch(url.strip())
    if not match:
        raise PacsError("a DIMSE URL is dimse://AET@HOST:PORT (AE title: 1 to 16 characters, no backslash)")
    return match.group(1).strip(), match.group(2).strip("[]"), int(match.group(3))


class DimsePacs:
    """A PACS at ``dimse://AET@HOST:PORT``."""

    def __init__(self, url: str, options: PacsOptions):
        self.called, self.host, self.port = parse_url(url)
        self.url = f"dimse://{self.called}@{self.host}:{self.port}"
        self.calling = os.environ.get(CALLING_AET_ENV, "CIT")[:16] or "CIT"
        self.timeout = options.timeout

    def _associate(self, contexts, handlers=(), roles=()):
        from pynetdicom import AE

        ae = AE(ae_title=self.calling)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout
        for context in contexts:
            ae.add_requested_context(context)
        assoc = ae.associate(
            self.host, self.port, ae_title=self.called, ext_neg=list(roles), evt_handlers=list(handlers)
        )
        if not assoc.is_established:
            raise PacsError(
                f"the PACS {self.url} refused or did not answer the association (as {self.calling})"
            )
        return assoc

    def _find(self, assoc, identifier) -> list:
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as Find

        answers = []
        for status, found in assoc.send_c_find(identifier, Find):
            code = getattr(status, "Status", None)
            if code in _PENDING and found is not None:
                answers.append(found)
            elif code != 0x0000:
                raise PacsError(f"the PACS failed a C-FIND (status {_status(code)})")
        return answers

    def find_studies(self, query: StudyQuery) -> list[str]:
        """StudyInstanceUIDs matching ``query`` (C-FIND at study level), sorted; invalid UIDs are dropped."""
        from pydicom import Dataset
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as Find

        assoc = self._associate([Find])
        found = set()
        try:
            for search in query.filters():
                identifier = Dataset()
                identifier.QueryRetrieveLevel = "STUDY"
                identifier.StudyInstanceUID = search.get("StudyInstanceUID", "")
                identifier.StudyDate = search.get("StudyDate", "")
                identifier.AccessionNumber = search.get("AccessionNumber", "")
                found.update(str(a.get("StudyInstanceUID", "")) for a in self._find(assoc, identifier))
        finally:
            assoc.release()
        return sorted(uid for uid in found if safe_uid(uid))

    def retrieve(self, study_uids: Sequence[str], cache: Path, max_bytes: int, modalities=()) -> Retrieval:
        """C-GET each wanted series of ``study_uids`` into ``cache``: those of ``modalities`` (all when
        empty), never a structured report (not an image; this tool's own among them)."""
        from pydicom import Dataset
        from pynetdicom import StoragePresentationContexts, build_role, evt
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as Find
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet as Get

        done = Retrieval()
        over_limit: list[PacsError] = []
        storage = [c.abstract_syntax for c in StoragePresentationContexts[:120]]  # 128 contexts at most

        def on_store(event) -> int:
            # an instance of the C-GET: checked, encoded and cached; the reply tells the PACS how it went
            dataset = event.dataset
            dataset.file_meta = event.file_meta
            uids = tuple(
                str(dataset.get(k, "")) for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
            )
            if not all(safe_uid(u) for u in uids):
                done.failures.append(
                    f"instance {uid_file_stem(uids[2])} skipped: invalid study, series or instance UID"
                )
                return 0x0000
            buffer = io.BytesIO()
            try:
                with quiet_dicom_warnings():
                    dataset.save_as(buffer, enforce_file_format=True)
                cache_instance(cache, uids, buffer.getvalue(), done, max_bytes)
            except PacsError as exc:
                over_limit.append(exc)
                return _OUT_OF_RESOURCES
            except (ValueError, *DICOM_PARSE_ERRORS) as exc:  # received, but not a DICOM file we can write
                done.instance_failed(uids, f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}")
            return 0x0000

        assoc = self._associate(
            [Find, Get, *storage],
            handlers=[(evt.EVT_C_STORE, on_store)],
            roles=[build_role(uid, scp_role=True) for uid in storage],
        )
        try:
            for study in study_uids:
                query = Dataset()
                query.QueryRetrieveLevel = "SERIES"
                query.StudyInstanceUID = study
                query.SeriesInstanceUID = ""
                query.Modality = ""
                try:
                    series_list = self._find(assoc, query)
                except PacsError as exc:
                    done.failures.append(f"study {study}: series not listed: {exc}")
                    continue
                if not series_list:
                    done.failures.append(f"study {study}: the PACS lists no series")
                for series in series_list:
                    uid, modality = str(series.get("SeriesInstanceUID", "")), str(series.get("Modality", ""))
                    if modality == "SR" or (modalities and modality not in modalities):
                        done.left_out += int(series.get("NumberOfSeriesRelatedInstances", 1) or 1)
                        continue
                    if not safe_uid(uid):
                        done.failures.append(
                            f"study {study}: series {uid_file_stem(uid)} skipped: invalid UID"
                        )
                        continue
                    self._get(assoc, Get, study, uid, done)
                    if over_limit:
                        raise over_limit[0]
        finally:
            assoc.release()
        return done

    def _get(self, assoc, model, study: str, series: str, done: Retrieval) -> None:
        from pydicom import Dataset

        query = Dataset()
        query.QueryRetrieveLevel = "SERIES"
        query.StudyInstanceUID, query.SeriesInstanceUID = study, series
        for status, _ in assoc.send_c_get(query, model):
            code = getattr(status, "Status", None)
            if code is None:
                done.failures.append(f"study {study}: series {series}: the PACS did not answer the C-GET")
            elif code not in (*_PENDING, 0x0000):
                failed = getattr(status, "NumberOfFailedSuboperations", "?")
                done.failures.append(
                    f"study {study}: series {series}: C-GET status {_status(code)}, {failed} instance(s) not retrieved"
                )

    def store(self, dataset) -> None:
        """C-STORE of one instance; raises PacsError when the PACS does not confirm it."""
        assoc = self._associate([dataset.SOPClassUID])
        try:
            status = assoc.send_c_store(dataset)
        finally:
            assoc.release()
        code = getattr(status, "Status", None)
        if code != 0x0000:
            raise PacsError(f"C-STORE status {_status(code)}")


def _status(code) -> str:
    return "none" if code is None else f"0x{code:04X}"
