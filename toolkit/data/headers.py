"""Header-level reads of image files: is a file usable, and what its header says.

Only headers are read, never pixel data: a datalist is built from thousands of files, and decoding
is the job of the readers in ``toolkit.transforms`` (a higher layer). A broken or foreign file
raises :class:`UnreadableImage` naming the reason, so callers report it and go on; any other
exception is a bug and propagates.

pydicom (~0.3 s) and nibabel (~0.4 s) are imported on first use, so ``import toolkit.data`` (bundle
configs, ``cit --help``) does not pay for them.
"""

from __future__ import annotations

import os
import struct
import warnings
import zlib
from pathlib import Path

from PIL import Image

from toolkit.data.files import file_kind

__all__ = [
    "UnreadableImage",
    "check_image",
    "colour_mode",
    "dicom_header",
    "dicom_ids",
    "nifti_header",
    "raster_header",
]

# What the libraries raise on a broken or foreign file, found by truncating and corrupting the
# shared data's DICOM, NIfTI and JPEG files: OSError (Pillow's UnidentifiedImageError is one),
# ValueError, EOFError and zlib.error (truncated gzip), struct.error and NotImplementedError
# (pydicom on a garbled element or an unknown VR). Library-specific classes are added per reader.
BAD_FILE_ERRORS: tuple[type[Exception], ...] = (
    OSError,
    ValueError,
    EOFError,
    zlib.error,
    struct.error,
    NotImplementedError,
)


class UnreadableImage(ValueError):
    """An image file is broken, truncated or not what its name says; ``reason`` says why."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):  # picklable across worker processes
        return self.__class__, (self.path, self.reason)


def _reason(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"


def dicom_header(path: str | os.PathLike):
    """The header (``pydicom.Dataset``, no pixel data) of an image DICOM file.

    Raises :class:`UnreadableImage` for an unreadable file and for a DICOM object without image
    attributes (Rows / Columns), such as a structured report.
    """
    import pydicom  # on first use, see the module docstring
    from pydicom.errors import BytesLengthException, InvalidDicomError

    try:
        with warnings.catch_warnings():  # header oddities are pydicom's to log; failures are raised
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(os.fspath(path), stop_before_pixels=True, force=True)
    except (*BAD_FILE_ERRORS, InvalidDicomError, BytesLengthException) as err:
        raise UnreadableImage(path, _reason(err)) from err
    if "Rows" not in ds or "Columns" not in ds:
        sop = ds.get("SOPClassUID", "unknown")
        name = getattr(sop, "name", sop)
        raise UnreadableImage(path, f"no image attributes (Rows/Columns) in the header; SOP class {name}")
    return ds


def dicom_ids(ds) -> dict[str, str]:
    """Patient and UID fields of a DICOM header, as datalist item keys (empty fields left out)."""
    fields = {
        "patient_id": "PatientID",
        "study_uid": "StudyInstanceUID",
        "series_uid": "SeriesInstanceUID",
        "sop_instance_uid": "SOPInstanceUID",
    }
    out = {}
    with warnings.catch_warnings():  # odd but usable UIDs are kept as they are
        warnings.simplefilter("ignore")
        for key, attr in fields.items():
            value = str(ds.get(attr, "") or "").strip()
            if value:
                out[key] = value
    return out


def nifti_header(path: str | os.PathLike):
    """The ``nibabel`` image of a NIfTI file (header read, voxels not loaded)."""
    import nibabel as nib  # on first use, see the module docstring
    from nibabel.filebasedimages import ImageFileError
    from nibabel.spatialimages import HeaderDataError

    try:
        return nib.load(os.fspath(path))
    except (*BAD_FILE_ERRORS, ImageFileError, HeaderDataError) as err:
        raise UnreadableImage(path, _reason(err)) from err


def raster_header(path: str | os.PathLike) -> dict:
    """``format``, ``mode``, ``size`` (width, height) and ``frames`` of a PNG / JPEG / ... file."""
    try:
        with Image.open(path) as img:
            info = {
                "format": img.format,
                "mode": img.mode,
                "size": img.size,
                "frames": int(getattr(img, "n_frames", 1)),
            }
    except (*BAD_FILE_ERRORS, Image.DecompressionBombError) as err:
        raise UnreadableImage(path, _reason(err)) from err
    if info["size"][0] < 1 or info["size"][1] < 1:
        raise UnreadableImage(path, f"empty image {info['size']}")
    return info


def check_image(path: Path, kind: str):
    """Raise :class:`UnreadableImage` unless ``path`` (of ``kind``, see ``files.file_kind``) looks
    usable; returns the header of a DICOM file (its ids go into the datalist), else None."""
    if kind == "dicom":
        return dicom_header(path)
    if kind == "nifti":
        nifti_header(path)
    elif kind == "raster":
        raster_header(path)
    return None


def colour_mode(path: str | os.PathLike) -> str:
    """The colour mode of an image file as stored: the Pillow mode of a PNG / JPEG ... (``L``,
    ``RGB``, ``RGBA``, ``I;16`` ...), the Photometric Interpretation of a DICOM file, ``volume``
    for NIfTI; ``unreadable`` when the header cannot be read."""
    kind = file_kind(path)
    try:
        if kind == "raster":
            return raster_header(path)["mode"]
        if kind == "dicom":
            return str(dicom_header(path).get("PhotometricInterpretation", "") or "unknown")
        if kind == "nifti":
            return "volume"
    except UnreadableImage:
        return "unreadable"
    return "unknown"
