"""A PACS over DICOMweb (dicomweb-client): QIDO-RS query, WADO-RS retrieval, STOW-RS store."""

from __future__ import annotations

import io
import json
import os
import urllib.parse
from collections.abc import Sequence
from pathlib import Path

from toolkit.inference.discovery import DICOM_PARSE_ERRORS, quiet_dicom_warnings
from toolkit.inference.naming import safe_uid, uid_file_stem
from toolkit.inference.pacs.common import (
    AUTH_ENV,
    SCHEME_PREFIX,
    PacsError,
    PacsOptions,
    Retrieval,
    StudyQuery,
    cache_instance,
    is_dicomweb_url,
    short_reason,
)

QIDO_PAGE = 500  # answers asked for per QIDO-RS request


def _base_url(url: str) -> str:
    """``http(s)://host:port/path`` of a ``dicomweb+`` URL; refuses credentials in it."""
    base = url[len(SCHEME_PREFIX) :] if is_dicomweb_url(url) else url
    parts = urllib.parse.urlsplit(base)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise PacsError("a DICOMweb URL is dicomweb+http://HOST:PORT/PATH or dicomweb+https://...")
    if parts.username or parts.password:
        raise PacsError(
            f"credentials in a URL are refused (they would show in process lists); use {AUTH_ENV}"
        )
    return base.rstrip("/")


def _credentials(auth_file: str | None) -> str:
    if auth_file:
        try:
            return Path(auth_file).read_text().strip()
        except OSError as exc:
            raise PacsError(f"--pacs-auth-file cannot be read: {exc.strerror}") from None
    return os.environ.get(AUTH_ENV, "").strip()


class DicomwebPacs:
    """A PACS at ``dicomweb+http(s)://...``, with the credentials and TLS settings of ``options``."""

    def __init__(self, url: str, options: PacsOptions):
        import requests
        from dicomweb_client import DICOMwebClient

        self.url = _base_url(url)
        session = requests.Session()
        session.verify = options.ca_bundle or True
        secret = _credentials(options.auth_file)
        if secret.lower().startswith("bearer "):
            session.headers["Authorization"] = secret
        elif secret:
            user, sep, password = secret.partition(":")
            if not sep:
                raise PacsError("PACS credentials: expected user:password or 'Bearer <token>'")
            session.auth = (user, password)
        self.client = DICOMwebClient(self.url, session=session, timeout=options.timeout)

    def find_studies(self, query: StudyQuery) -> list[str]:
        return find_studies(self.client, query)

    def retrieve(self, study_uids: Sequence[str], cache: Path, max_bytes: int, modalities=()) -> Retrieval:
        return retrieve(self.client, study_uids, cache, max_bytes, modalities)

    def store(self, dataset) -> None:
        """STOW-RS of one instance; raises OSError (HTTP, network) or ValueError (refused)."""
        answer = self.client.store_instances([dataset])
        failed = answer.get("FailedSOPSequence") if answer is not None else None
        if failed:
            raise ValueError(f"the PACS refused it (failure reason {failed[0].get('FailureReason', '?')})")


def _uid_of(dataset: dict, tag: str) -> str:
    """The first value of a DICOM JSON attribute (``tag`` as 8 hex digits), or ''."""
    values = dataset.get(tag, {}).get("Value") or [""]
    return str(values[0])


def _search_all(search, **kwargs) -> list[dict]:
    """Every answer of a QIDO-RS ``search`` (a ``DICOMwebClient.search_for_*`` method), page by page.

    Our own paging rather than dicomweb-client's ``get_remaining``, which asks for pages until one is
    empty: a server that ignores ``offset`` answers the same page forever (Orthanc 1.10.1 does for a
    ModalitiesInStudy query without limit). A full page that brings nothing new shows such a server:
    its whole answer is then asked for in one request, without limit and offset."""
    answers, seen = [], set()

    def add(page: list[dict]) -> int:
        fresh = [a for a in page if json.dumps(a, sort_keys=True) not in seen]
        seen.update(json.dumps(a, sort_keys=True) for a in fresh)
        answers.extend(fresh)
        return len(fresh)

    while True:
        page = search(limit=QIDO_PAGE, offset=len(answers), **kwargs)
        fresh = add(page)
        if len(page) < QIDO_PAGE:
            return answers
        if not fresh:
            add(search(**kwargs))
            return answers


def find_studies(client, query: StudyQuery) -> list[str]:
    """StudyInstanceUIDs matching ``query`` (QIDO-RS, all pages), sorted; invalid UIDs are dropped."""
    import requests

    found = set()
    for search in query.filters():
        try:
            answers = _search_all(
                client.search_for_studies, search_filters=search, fields=["StudyInstanceUID"]
            )
        except (
            requests.RequestException,
            ValueError,
        ) as exc:  # said without the URL: its query holds filters
            raise PacsError(f"the PACS did not answer the study query: {short_reason(exc)}") from None
        found.update(_uid_of(a, "0020000D") for a in answers)
    return sorted(uid for uid in found if safe_uid(uid))


def retrieve(
    client, study_uids: Sequence[str], cache: Path, max_bytes: int, modalities: Sequence[str] = ()
) -> Retrieval:
    """Retrieve the instances of ``study_uids`` into ``cache`` (WADO-RS, one instance at a time): those of
    ``modalities`` (all when empty), never a structured report (not an image; this tool's own among them)."""
    import requests

    done = Retrieval()
    for study in study_uids:
        try:
            instances = _search_all(
                client.search_for_instances,
                study_instance_uid=study,
                fields=["SeriesInstanceUID", "SOPInstanceUID", "Modality"],
            )
        except (requests.RequestException, ValueError) as exc:
            done.failures.append(f"study {study}: instances not listed: {short_reason(exc)}")
            continue
        if not instances:
            done.failures.append(f"study {study}: the PACS lists no instance")
        for answer in instances:
            modality = _uid_of(answer, "00080060")
            if modality == "SR" or (modalities and modality not in modalities):
                done.left_out += 1
                continue
            series, sop = _uid_of(answer, "0020000E"), _uid_of(answer, "00080018")
            if not (safe_uid(series) and safe_uid(sop)):
                done.failures.append(
                    f"study {study}: instance {uid_file_stem(sop)} skipped: invalid series or instance UID"
                )
                continue
            try:
                with quiet_dicom_warnings():
                    dataset = client.retrieve_instance(study, series, sop)
                    buffer = io.BytesIO()
                    dataset.save_as(buffer, enforce_file_format=True)
            except (requests.RequestException, ValueError, *DICOM_PARSE_ERRORS) as exc:
                done.failures.append(f"study {study}: instance {sop} not retrieved: {short_reason(exc)}")
                continue
            cache_instance(cache, (study, series, sop), buffer.getvalue(), done, max_bytes)
    return done
