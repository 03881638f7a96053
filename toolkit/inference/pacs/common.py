"""What the PACS modules share: the query, the options, the cache of retrieved instances."""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from toolkit.inference.naming import inside, safe_uid
from toolkit.io import atomic_write_bytes

SCHEME_PREFIX = "dicomweb+"
DIMSE_PREFIX = "dimse://"
PACS_FOLDER = "pacs"
CACHE_FOLDER = f"{PACS_FOLDER}/cache"
STORE_LEDGER = f"{PACS_FOLDER}/sr-stored.json"
AUTH_ENV = "CIT_PACS_AUTH"
EXIT_NOT_STORED = 7  # every row written, but some DICOM SR is not in the PACS yet (rerun to retry)
_STUDY_DATE = re.compile(r"(\d{8})?-?(\d{8})?")


class PacsError(OSError):
    """The PACS cannot be used as asked (bad URL, credentials, query, cache limit)."""


@dataclass(frozen=True)
class StudyQuery:
    """QIDO-RS filters; every one given must match. ``modalities`` (any of them) is matched per instance
    (its Modality), not by the study's ModalitiesInStudy: that attribute is optional in QIDO-RS, and
    Orthanc 1.10.1 pages it wrongly (offset applied after limit, so later pages come back empty)."""

    study_uids: tuple[str, ...] = ()
    modalities: tuple[str, ...] = ()
    study_date: str = ""  # YYYYMMDD, or a range YYYYMMDD-YYYYMMDD (either end may be open)
    accession: str = ""

    def filters(self) -> list[dict[str, str]]:
        """One QIDO-RS study filter set per search to run (one per study UID)."""
        base = {}
        if self.study_date:
            if not _STUDY_DATE.fullmatch(self.study_date) or self.study_date == "-":
                raise PacsError(f"--study-date {self.study_date!r}: expected YYYYMMDD or YYYYMMDD-YYYYMMDD")
            base["StudyDate"] = self.study_date
        if self.accession:
            base["AccessionNumber"] = self.accession
        searches = []
        for uid in self.study_uids or ("",):
            if uid and not safe_uid(uid):
                raise PacsError("--study-uid: a UID is digits and dots, at most 64 characters")
            searches.append({**base, "StudyInstanceUID": uid} if uid else dict(base))
        return searches


@dataclass(frozen=True)
class PacsOptions:
    """What `cit infer` needs besides the folder options when a PACS is the input or the destination."""

    query: StudyQuery = field(default_factory=StudyQuery)
    store_sr: str | None = None  # dicomweb+http(s):// URL for the reports
    keep_cache: bool = False
    cache_max_bytes: int = 20 << 30
    auth_file: str | None = None
    ca_bundle: str | None = None
    timeout: float = 60.0


@dataclass
class Retrieval:
    """What a retrieval put in the cache, and what it could not."""

    studies: int = 0  # found by the query
    instances: int = 0
    bytes: int = 0
    left_out: int = 0  # instances of other modalities, and structured reports (Modality SR)
    failures: list[str] = field(default_factory=list)  # one line each, UIDs only (no patient data)
    # listed instances the PACS did not deliver: ((study, series, SOP instance), one-line reason); each
    # becomes an error row of the run (see run.py), so a failed retrieval is never silently missing
    not_retrieved: list[tuple[tuple[str, str, str], str]] = field(default_factory=list)

    def instance_failed(self, uids: tuple[str, str, str], reason: str) -> None:
        """Record that the instance ``uids`` (valid UIDs) could not be retrieved, and why (one line)."""
        self.failures.append(f"study {uids[0]}: instance {uids[2]} not retrieved: {reason}")
        self.not_retrieved.append((uids, reason))


def is_dicomweb_url(text: str | None) -> bool:
    return bool(text) and text.lower().startswith(SCHEME_PREFIX)


def is_dimse_url(text: str | None) -> bool:
    return bool(text) and text.lower().startswith(DIMSE_PREFIX)


def is_pacs_url(text: str | None) -> bool:
    return is_dicomweb_url(text) or is_dimse_url(text)


def _mtime_ns(data: bytes) -> int:
    """A modification time from the instance's bytes (2001-2009): the same bytes give the same resume key."""
    return (1_000_000_000 + int(hashlib.sha256(data).hexdigest()[:7], 16)) * 1_000_000_000


def cache_instance(
    cache: Path, uids: tuple[str, str, str], data: bytes, done: Retrieval, max_bytes: int
) -> None:
    """Write one retrieved instance (its encoded bytes) to ``cache/<study>/<series>/<sop>.dcm``, counted in
    ``done``; raises :class:`PacsError` beyond ``max_bytes``. ``uids`` (study, series, SOP instance) must
    be valid UIDs (checked by the caller, which reports the instance otherwise)."""
    if done.bytes + len(data) > max_bytes:
        raise PacsError(
            f"the retrieved studies exceed the cache limit of {max_bytes / 2**30:.3g} GiB "
            "(--pacs-cache-gb); narrow the query (--study-date, --study-uid, ...) or raise the limit"
        )
    path = atomic_write_bytes(inside(cache.parent, f"{cache.name}/{'/'.join(uids)}.dcm"), data)
    os.utime(path, ns=(_mtime_ns(data), _mtime_ns(data)))
    done.instances += 1
    done.bytes += len(data)


def short_reason(exc: BaseException) -> str:
    """One line about a PACS or parse error: type and status, no URL query (it may hold filters)."""
    response = getattr(exc, "response", None)
    if response is None:  # retrying.RetryError (dicomweb-client's retries): the last answer
        response = getattr(getattr(exc, "last_attempt", None), "value", None)
    if hasattr(response, "status_code"):
        return f"HTTP {response.status_code} {response.reason}"
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
