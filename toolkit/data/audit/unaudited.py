"""Files below a source folder that were not audited, each with the reason it was left out."""

from __future__ import annotations

import errno
import os
import stat
import warnings
from collections.abc import Iterable
from pathlib import Path

from toolkit.data.files import MASK_FOLDERS, file_kind
from toolkit.data.headers import UnreadableImage, check_image

# Files beside the images that are not images to audit (label tables, notes) and folders that hold
# segmentation masks: not listed as unaudited.
_METADATA_SUFFIXES = (
    ".csv",
    ".tsv",
    ".json",
    ".txt",
    ".md",
    ".yaml",
    ".yml",
    ".xml",
    ".xlsx",
    ".pdf",
    ".html",
)
_METADATA_NAMES = ("license", "readme", "dicomdir")


def not_audited(root: str | os.PathLike, audited: Iterable[str]) -> list[dict]:
    """Every file below the folder ``root`` that is not among ``audited`` (image paths of the datalist), as
    ``{"image", "split": None, "error"}`` with the reason it was left out: a zero-byte file, a link that
    loops or points nowhere, a folder that cannot be listed, a file that is not an image, an unreadable
    image (a PNG bomb, a DICOM object without pixels such as an SR or RT plan), or an image the datalist
    did not take (no class). Hidden entries, metadata files (CSV, JSON, text ...) and mask folders are
    skipped. Reasons hold no full path."""
    root = Path(root)
    seen = set()
    for image in audited:
        seen.update({os.path.abspath(image), os.path.realpath(image)})
    missing: list[dict] = []

    def unlistable(exc: OSError) -> None:
        missing.append(
            {
                "image": str(exc.filename or root),
                "split": None,
                "error": f"cannot list folder: {exc.strerror or type(exc).__name__}",
            }
        )

    for dirpath, dirnames, filenames in os.walk(root, onerror=unlistable):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d.lower() not in MASK_FOLDERS)
        for name in sorted(filenames):
            lowered = name.lower()
            if name.startswith(".") or lowered.endswith(_METADATA_SUFFIXES) or lowered in _METADATA_NAMES:
                continue
            path = os.path.join(dirpath, name)
            if os.path.abspath(path) in seen:
                continue
            missing.append({"image": path, "split": None, "error": _why_not_audited(Path(path))})
    return missing


def _why_not_audited(path: Path) -> str:
    try:
        st = path.stat()
    except OSError as exc:
        if os.path.islink(path):
            return "symbolic link loop" if exc.errno == errno.ELOOP else "dangling symbolic link (no target)"
        return f"cannot read: {exc.strerror or type(exc).__name__}"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file (FIFO, socket or device)"
    if st.st_size == 0:
        return "empty file (0 bytes)"
    kind = file_kind(path)
    if kind is None:
        return "not an image (PNG/JPEG/DICOM/NIfTI)"
    try:
        with warnings.catch_warnings():  # pydicom quotes values (patient data) and paths in warnings
            warnings.simplefilter("ignore")
            check_image(path, kind)
    except UnreadableImage as err:
        return without_path(err.reason, str(path))
    return "not in the datalist (no class or label found for it)"


def without_path(text: str, path: str) -> str:
    """``text`` with the file's full path (as given or resolved) replaced by its name."""
    for form in sorted({path, os.path.abspath(path), os.path.realpath(path)}, key=len, reverse=True):
        text = text.replace(form, os.path.basename(path))
    return text
