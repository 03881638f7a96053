"""Atomic file writes (the one way every layer of the toolkit writes a result file) and file hashes.

A reader (a person, a resumed run, another process) sees either the old file or the whole new
one, never half of it: the content goes to a temporary file in the same folder (same file system,
so the rename is atomic), is flushed and fsynced, renamed over the target, and the folder is
fsynced so the rename itself survives a power cut. Files get ``mode`` (default 0o644 under the
process umask: results are shared, reviewable files), not ``tempfile.mkstemp``'s 0600.
This module imports nothing from the toolkit, so every layer may use it.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import re
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_write_bytes",
    "atomic_write_csv",
    "atomic_write_json",
    "atomic_write_text",
    "csv_text",
    "neutralise_formula",
    "remembered_digests",
    "sha256_file",
]


def atomic_write_bytes(path: str | os.PathLike, data: bytes, mode: int = 0o644) -> Path:
    """Write ``data`` to ``path`` atomically (parent folders are created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike, text: str, mode: int = 0o644) -> Path:
    """Write ``text`` (UTF-8, newlines as given) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"), mode)


def atomic_write_json(path: str | os.PathLike, obj: Any, mode: int = 0o644, indent: int | None = 1) -> Path:
    """Write ``obj`` as JSON (ending in a newline) to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=indent) + "\n", mode)


# A cell a spreadsheet would evaluate as a formula starts with one of these (OWASP "CSV injection").
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


_NUMBER = re.compile(r"[+-]?\d+(\.\d*)?([eE][+-]?\d+)?")


def neutralise_formula(text: str) -> str:
    """``text`` with a leading ``'`` when a spreadsheet would read it as a formula: class names, file
    names, patient ids and DICOM values are chosen by whoever made the data. A plain number
    (``-0.25``) is left as it is."""
    if text.startswith(FORMULA_PREFIXES) and not _NUMBER.fullmatch(text):
        return "'" + text
    return text


def csv_text(rows: Iterable[Iterable]) -> str:
    """Rows as CSV text (``\n`` line ends), every text cell passed through :func:`neutralise_formula`:
    the one CSV writer of the project, so that no CSV it writes carries a live formula."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    for row in rows:
        writer.writerow([neutralise_formula(v) if isinstance(v, str) else v for v in row])
    return buffer.getvalue()


def float_text(value: float) -> str:
    """A float (a probability, mostly) as CSV text with the 9 significant digits that round-trip a
    float32. Six decimals, as written before, tied every probability above 0.9999995 or under 5e-7, and
    the AUROC of a confident model, computed from the file, fell with the ties."""
    return f"{float(value):.9g}"


def atomic_write_csv(
    path: str | os.PathLike, header: list[str], rows: Iterable[Iterable], mode: int = 0o644
) -> Path:
    """Write a header and rows as CSV (:func:`csv_text`) to ``path`` atomically."""
    return atomic_write_text(path, csv_text([header, *rows]), mode)


_DIGESTS: dict[tuple, str] | None = None  # while remembered_digests() is active, see sha256_file


@contextlib.contextmanager
def remembered_digests():
    """Within the block, a file hashed before and unchanged since (same device, inode, size, modification
    and change times) is not read again: one `cit infer` run checks the same weights and exports several
    times. Only for a block in which the files are not rewritten on purpose (timestamps are coarse)."""
    global _DIGESTS
    outer, _DIGESTS = _DIGESTS, {} if _DIGESTS is None else _DIGESTS
    try:
        yield
    finally:
        _DIGESTS = outer


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks (remembered inside :func:`remembered_digests`)."""
    memo = _DIGESTS
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        version = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        if memo is not None and version in memo:
            return memo[version]
        digest = hashlib.sha256()
        while block := f.read(chunk):
            digest.update(block)
    if memo is not None:
        memo[version] = digest.hexdigest()
    return digest.hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some file systems (and Windows) cannot open a folder; the rename still happened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
