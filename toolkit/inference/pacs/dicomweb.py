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
QIDO_MAX_ANSWERS = 1_000_000  # a server answering new datasets without end is stopped there
# dicomweb-client retries every request that raised (timeout, connection dropped) or was answered 429, 408,
# 503 or 504, 5 times 2-16 s apart: a slow PACS would hold each instance for minutes (5 timeouts + 30 s).
# Here one retry, 1 s later; what still fails becomes an error row, and the next run retries it.
HTTP_ATTEMPTS, HTTP_RETRY_WAIT_MS = 2, 500  # retrying's wait: 2 ** attempt * multiplier


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
        self.client.set_http_retry_params(
            retry=True, max_attempts=HTTP_ATTEMPTS, wait_exponential_multiplier=HTTP_RETRY_WAIT_MS
        )

    def find_studies(self, query: StudyQuery) -> list[str]:
        return sorted(study_instance_counts(self.client, query))

    def study_instance_counts(self, query: StudyQuery) -> dict[str, int | None]:
        return study_instance_counts(self.client, query)

    def retrieve(self, study_uids: Sequence[str], cache: Path, max_bytes: int, modalities=()) -> Retrieval:
        return retrieve(self.client, study_uids, cache, max_bytes, modalities)

    def store(self, dataset) -> None:
        """STOW-RS of one instance; raises OSError (HTTP, network) or ValueError (refused)."""
        answer = self.client.store_instances([dataset])
        failed = answer.get("FailedSOPSequence") if answer is not None else None
        if failed:
            raise ValueError(f"the PACS refused it (failure reason {failed[0].get('FailureReason', '?')})")


def _uid_of(dataset: dict, tag: str) -> str:
    """The first value of a DICOM JSON attribute (``tag`` as 8 hex digits), or '' (also when malformed)."""
    attribute = dataset.get(tag)
    values = attribute.get("Value") if isinstance(attribute, dict) else None
    return str(values[0]) if isinstance(values, list) and values else ""


def _search_all(search, **kwargs) -> list[dict]:
    """Every answer of a QIDO-RS ``search`` (a ``DICOMwebClient.search_for_*`` method), page by page,
    until a page brings nothing new; raises ValueError on an answer that is not DICOM JSON datasets.

    Our own paging rather than dicomweb-client's ``get_remaining``, which asks for pages until one is
    empty: a server that ignores ``offset`` answers the same page forever (Orthanc 1.10.1 does for a
    ModalitiesInStudy query without limit). A full page that brings nothing new shows such a server:
    its whole answer is then asked for in one request, without limit and offset. A short page does not
    end the search: a server may answer fewer than ``limit`` per page (its own maximum)."""
    answers, seen, offset = [], set(), 0

    def add(page) -> int:
        if not isinstance(page, list) or not all(isinstance(a, dict) for a in page):
            raise ValueError("the PACS answered a query with something else than DICOM JSON datasets")
        fresh = [a for a in page if json.dumps(a, sort_keys=True) not in seen]
        seen.update(json.dumps(a, sort_keys=True) for a in fresh)
        answers.extend(fresh)
        if len(answers) > QIDO_MAX_ANSWERS:
            raise ValueError(f"the PACS answered a query with more than {QIDO_MAX_ANSWERS} datasets")
        return len(fresh)

    while True:
        page = search(limit=QIDO_PAGE, offset=offset, **kwargs)
        fresh = add(page)
        offset += len(page)
        if not fresh and len(page) >= QIDO_PAGE:
            add(search(**kwargs))
        if not fresh:
            return answers


def _http_errors() -> tuple[type[Exception], ...]:
    """What a request through dicomweb-client raises on a failure of the PACS: requests' errors (HTTP
    status, timeout, connection), ValueError (an answer that is not what was asked) and retrying's
    RetryError (a 503 or another retried status still answered at the last attempt)."""
    import requests
    from retrying import RetryError

    return requests.RequestException, ValueError, RetryError


def study_instance_counts(client, query: StudyQuery) -> dict[str, int | None]:
    """{StudyInstanceUID: NumberOfStudyRelatedInstances, None where the PACS does not say} of the studies
    matching ``query`` (QIDO-RS, all pages); invalid UIDs are dropped."""
    found = {}
    for search in query.filters():
        try:
            answers = _search_all(
                client.search_for_studies,
                search_filters=search,
                fields=["StudyInstanceUID", "NumberOfStudyRelatedInstances"],
            )
        except _http_errors() as exc:  # said without the URL: its query holds filters
            raise PacsError(f"the PACS did not answer the study query: {short_reason(exc)}") from None
        for answer in answers:
            count = _uid_of(answer, "00201208")
            found[_uid_of(answer, "0020000D")] = int(count) if count.isdigit() else None
    return {uid: count for uid, count in found.items() if safe_uid(uid)}


def retrieve(
    client, study_uids: Sequence[str], cache: Path, max_bytes: int, modalities: Sequence[str] = ()
) -> Retrieval:
    """Retrieve the instances of ``study_uids`` into ``cache`` (WADO-RS): those of ``modalities`` (all when
    empty), never a structured report (not an image; this tool's own among them).

    One request per series (a request per instance costs ~60 ms of a loopback Orthanc for a 512 KB
    instance, 10x the series' share); what the series request did not deliver (an error mid-way, a part
    that is not DICOM) is asked for instance by instance, and what still fails is an error row."""
    done = Retrieval()
    for study in study_uids:
        wanted = _wanted_instances(client, study, modalities, done)
        for series, sops in wanted.items():
            missing = _retrieve_series(client, (study, series), sops, cache, max_bytes, done)
            for sop in sops:
                if sop in missing:
                    _retrieve_instance(client, (study, series, sop), cache, max_bytes, done)
    return done


def _wanted_instances(client, study: str, modalities: Sequence[str], done: Retrieval) -> dict[str, list[str]]:
    """{series: [SOP instance UIDs]} of ``study`` to retrieve (QIDO-RS); what is left out is counted."""
    try:
        instances = _search_all(
            client.search_for_instances,
            study_instance_uid=study,
            fields=["SeriesInstanceUID", "SOPInstanceUID", "Modality"],
        )
    except _http_errors() as exc:
        done.failures.append(f"study {study}: instances not listed: {short_reason(exc)}")
        return {}
    if not instances:
        done.failures.append(f"study {study}: the PACS lists no instance")
    wanted: dict[str, list[str]] = {}
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
        wanted.setdefault(series, []).append(sop)
    return wanted


def _encoded(dataset) -> bytes:
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _retrieve_series(
    client, uids: tuple[str, str], sops: list[str], cache, max_bytes, done: Retrieval
) -> set[str]:
    """Cache the instances ``sops`` of one series from a single streamed request; returns those not cached."""
    missing = set(sops)
    try:
        with quiet_dicom_warnings():
            for dataset in client.iter_series(*uids):
                sop = str(dataset.get("SOPInstanceUID", ""))
                if sop in missing:  # also leaves out the series' other instances (reports, other modalities)
                    cache_instance(cache, (*uids, sop), _encoded(dataset), done, max_bytes)
                    missing.discard(sop)
    except (*_http_errors(), *DICOM_PARSE_ERRORS):  # the rest is asked for one by one
        pass
    return missing


def _retrieve_instance(client, uids: tuple[str, str, str], cache, max_bytes, done: Retrieval) -> None:
    try:
        with quiet_dicom_warnings():
            data = _encoded(client.retrieve_instance(*uids))
    except (*_http_errors(), *DICOM_PARSE_ERRORS) as exc:
        # HTTP errors, timeouts, a connection closed mid-transfer, a part that is not DICOM
        done.instance_failed(uids, short_reason(exc))
        return
    cache_instance(cache, uids, data, done, max_bytes)
