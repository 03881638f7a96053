"""Recognising medical image files by content and extension.

DICOM is recognised by content (the ``DICM`` magic at byte 128), because PACS exports often have
no ``.dcm`` extension; old ACR-NEMA files without a preamble are recognised by their first
element being a group-0008 tag in implicit or explicit little-endian form.
"""

from __future__ import annotations

import os
from pathlib import Path

NIFTI_SUFFIXES = (".nii", ".nii.gz")
RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
# Volume formats only 3D models read (through ITK); not returned by ``file_kind``.
VOLUME_SUFFIXES = (".mha", ".mhd", ".nrrd", ".nhdr")
DICOM_SUFFIXES = (".dcm", ".dicom")
# Segmentation masks stored beside the images (e.g. COVID-19 Radiography Database <class>/masks/)
# are not images to classify.
MASK_FOLDERS = ("mask", "masks", "segmentation", "segmentations")


def _lower_name(path: str | os.PathLike) -> str:
    return os.fspath(path).lower()


def is_dicom_file(path: str | os.PathLike) -> bool:
    """True if ``path`` looks like DICOM by content (or has a DICOM extension but no preamble)."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    if len(head) >= 132 and head[128:132] == b"DICM":
        return True
    # Headless (ACR-NEMA / no-preamble) files start with a low group number such as (0008,xxxx).
    if len(head) >= 8 and head[1] == 0x00 and head[0] in (0x02, 0x08) and head[3] == 0x00:
        return True
    return _lower_name(path).endswith(DICOM_SUFFIXES) and len(head) > 0


def is_image_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an image a datalist may name: a 2D kind of :func:`file_kind` or a volume format."""
    return file_kind(path) is not None or _lower_name(path).endswith(VOLUME_SUFFIXES)


def file_kind(path: str | os.PathLike) -> str | None:
    """Classify a file as ``"dicom"``, ``"nifti"`` or ``"raster"`` (PNG/JPEG/...); None otherwise."""
    name = _lower_name(path)
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(RASTER_SUFFIXES):
        return "raster"
    if is_dicom_file(path):
        return "dicom"
    return None


def find_image_files(
    root: str | os.PathLike, kinds: tuple[str, ...] = ("dicom", "nifti", "raster")
) -> list[Path]:
    """All image files below ``root`` (recursively, sorted, hidden and mask folders skipped) of the given kinds."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d.lower() not in MASK_FOLDERS)
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = Path(dirpath) / name
            if file_kind(path) in kinds:
                found.append(path)
    return found
