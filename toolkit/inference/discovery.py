"""Finding the inputs of a batch-inference run: one work item per image (or per series / frame).

Files are recognised by content where it matters (DICOM without an extension is common in PACS
exports). Every DICOM header is read once here, without pixel data, so that inputs can be filtered
(modality, SOP class, body part), grouped by series and keyed for resuming; anything that cannot be
an input becomes an item that is already decided (status ``error`` or ``skipped``) with a one-line
reason, so that every file the user gave gets exactly one row.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import warnings
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pydicom
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.uid import UID

from toolkit.data.files import DICOM_SUFFIXES, NIFTI_SUFFIXES, RASTER_SUFFIXES, file_kind

# File name endings that never hold an image: ignored without a row (counted in the summary).
_IMAGE_SUFFIXES = DICOM_SUFFIXES + NIFTI_SUFFIXES + RASTER_SUFFIXES
_DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
# What pydicom raises on a file that is not valid DICOM, found by feeding it truncated, byte-flipped
# and random versions of the real files in shared/data/dicom. Anything else is a bug and surfaces.
DICOM_PARSE_ERRORS = (OSError, EOFError, ValueError, NotImplementedError, InvalidDicomError, BytesLengthException,
                      struct.error, zlib.error)


@dataclass
class InputItem:
    """One unit of work; becomes exactly one row of the output."""

    path: str  # relative to the input root ('/'-separated); the key users see in the CSV
    abs_path: str
    kind: str  # dicom | nifti | raster | unknown
    size: int = 0
    mtime_ns: int = 0
    frame: int | None = None  # 0-based frame of a multi-frame instance when frames are split
    number_of_frames: int = 1
    files: list[str] = field(default_factory=list)  # series mode: the instances in slice order
    study_instance_uid: str = ""
    series_instance_uid: str = ""
    sop_instance_uid: str = ""
    sop_class_uid: str = ""
    modality: str = ""
    body_part: str = ""
    patient_id: str = ""
    patient_name: str = ""
    status: str | None = None  # set when decided without inference (error / skipped)
    reason: str = ""

    @property
    def key(self) -> str:
        """Resume key: the same file (path, size, mtime) and frame is not processed twice."""
        frame = "" if self.frame is None else str(self.frame)
        return f"{self.path}|{self.size}|{self.mtime_ns}|{frame}"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class DicomFilters:
    """Which DICOM inputs to classify; empty tuples accept everything."""

    modalities: tuple[str, ...] = ()
    sop_classes: tuple[str, ...] = ()  # UIDs or keywords such as CTImageStorage
    body_parts: tuple[str, ...] = ()

    @property
    def active(self) -> bool:
        return bool(self.modalities or self.sop_classes or self.body_parts)

    def rejection(self, item: InputItem) -> str | None:
        """Why ``item`` is filtered out, or None if it passes."""
        if item.kind != "dicom":
            return f"not DICOM ({item.kind}) and DICOM filters were given"
        if self.modalities and item.modality.upper() not in {m.upper() for m in self.modalities}:
            return f"modality '{item.modality}' not in {list(self.modalities)}"
        if self.sop_classes and not _sop_class_matches(item.sop_class_uid, self.sop_classes):
            return f"SOP class {_sop_class_name(item.sop_class_uid)} not in {list(self.sop_classes)}"
        if self.body_parts and item.body_part.upper() not in {b.upper() for b in self.body_parts}:
            return f"body part '{item.body_part}' not in {list(self.body_parts)}"
        return None


def _sop_class_name(uid: str) -> str:
    return UID(uid).name if uid else "(none)"


def _sop_class_matches(uid: str, wanted: Iterable[str]) -> bool:
    keyword = UID(uid).keyword if uid else ""
    return any(w == uid or (keyword and w.lower() == keyword.lower()) for w in wanted)


def _is_candidate(path: Path) -> bool:
    """Files that should be images: known image extensions, no extension (PACS style) or DICOM content."""
    name = path.name.lower()
    if name.endswith(_IMAGE_SUFFIXES) or "." not in name:
        return True
    return file_kind(path) == "dicom"


def walk_files(root: str | os.PathLike, exclude: str | os.PathLike | None = None) -> tuple[list[Path], int]:
    """Candidate image files below ``root`` (sorted, hidden entries skipped) and the count of other files.

    ``exclude``: a folder not to enter (the run's own output when it lies inside the input).
    """
    root = Path(root)
    if root.is_file():
        return [root], 0
    excluded = Path(exclude).resolve() if exclude is not None else None
    found, ignored = [], 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")
                             and (excluded is None or (Path(dirpath) / d).resolve() != excluded))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = Path(dirpath) / name
            if _is_candidate(path):
                found.append(path)
            else:
                ignored += 1
    return found, ignored


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:300]


@contextlib.contextmanager
def quiet_dicom_warnings():
    """Silence pydicom / highdicom warnings for the block: they quote element values, which may be
    patient names or IDs, and logs must not hold those."""
    loggers = [logging.getLogger(name) for name in ("pydicom", "highdicom")]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for lg in loggers:
            lg.setLevel(logging.CRITICAL)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels, strict=True):
                lg.setLevel(level)


def _text(value, limit: int = 256) -> str:
    """A header value as printable text of at most ``limit`` characters. Valid values (UIDs, codes, names:
    at most 64 characters) pass unchanged; a corrupt header can hold megabytes of binary, and a control
    character such as a carriage return would split its row of predictions.csv."""
    text = str(value or "")[:limit]
    return text if text.isprintable() else "".join(c if c.isprintable() else "?" for c in text)


def _read_dicom_header(item: InputItem) -> None:
    with quiet_dicom_warnings():
        _read_dicom_header_unchecked(item)


def _read_dicom_header_unchecked(item: InputItem) -> None:
    """Fill the DICOM attributes of ``item`` from its header, or mark it as an error."""
    try:
        ds = pydicom.dcmread(item.abs_path, stop_before_pixels=True, force=True)
    except DICOM_PARSE_ERRORS as exc:  # a parse failure is a property of the file
        item.status, item.reason = "error", f"unreadable DICOM header: {_one_line(exc)}"
        return
    try:
        item.sop_class_uid = _text(ds.get("SOPClassUID", "") or getattr(ds.file_meta, "MediaStorageSOPClassUID", ""))
        item.study_instance_uid = _text(ds.get("StudyInstanceUID", ""))
        item.series_instance_uid = _text(ds.get("SeriesInstanceUID", ""))
        item.sop_instance_uid = _text(ds.get("SOPInstanceUID", ""))
        item.modality = _text(ds.get("Modality", ""))
        item.body_part = _text(ds.get("BodyPartExamined", ""))
        item.patient_id = _text(ds.get("PatientID", ""))
        item.patient_name = _text(ds.get("PatientName", ""))
        frames = ds.get("NumberOfFrames", 1)
        item.number_of_frames = int(frames) if frames not in (None, "") else 1
    except (*DICOM_PARSE_ERRORS, TypeError) as exc:  # invalid values: NumberOfFrames "1A" or multi-valued
        item.status, item.reason = "error", f"invalid DICOM attribute: {_one_line(exc)}"
        return
    if item.sop_class_uid == _DICOMDIR_SOP_CLASS:
        item.status, item.reason = "skipped", "DICOMDIR (media directory), not an image"
    elif "Rows" not in ds or "Columns" not in ds:
        if not item.sop_class_uid and not item.sop_instance_uid and not ds.get("PixelData"):
            item.status, item.reason = "error", "not a DICOM image: no DICOM header or image attributes found"
        else:
            item.status = "error"
            item.reason = f"not an image: {_sop_class_name(item.sop_class_uid)} has no Rows/Columns/Pixel Data"


def _sort_key_in_series(item: InputItem) -> tuple:
    """Slice order of an instance: position along the slice normal, else InstanceNumber, else path."""
    try:
        ds = pydicom.dcmread(item.abs_path, stop_before_pixels=True, force=True,
                             specific_tags=["ImagePositionPatient", "ImageOrientationPatient", "InstanceNumber"])
        pos = [float(v) for v in ds.get("ImagePositionPatient", [])]
        ori = [float(v) for v in ds.get("ImageOrientationPatient", [])]
        if len(pos) == 3 and len(ori) == 6:
            normal = (ori[1] * ori[5] - ori[2] * ori[4], ori[2] * ori[3] - ori[0] * ori[5], ori[0] * ori[4] - ori[1] * ori[3])
            return (0, sum(p * n for p, n in zip(pos, normal, strict=True)), item.path)
        number = ds.get("InstanceNumber")
        if number is not None:
            return (1, float(number), item.path)
    except (*DICOM_PARSE_ERRORS, TypeError):  # unreadable or non-numeric values: fall back to the path order
        pass
    return (2, 0.0, item.path)


def discover_inputs(
    root: str | os.PathLike,
    filters: DicomFilters | None = None,
    frames: str = "reject",
    series_mode: bool = False,
    exclude: str | os.PathLike | None = None,
) -> tuple[list[InputItem], int]:
    """Work items for every candidate file below ``root`` and the number of non-image files ignored.

    ``frames``: what to do with multi-frame DICOM for 2D models: ``reject`` (one error row) or
    ``each`` (one item per frame). ``series_mode`` (3D models): valid DICOM instances of a series
    become one item listing its files in slice order; NIfTI stays one item per file.
    ``exclude``: a folder below ``root`` to leave out (the output folder of the run).
    """
    filters = filters or DicomFilters()
    root = Path(root)
    paths, ignored = walk_files(root, exclude)
    base = root if root.is_dir() else root.parent
    items: list[InputItem] = []
    for path in paths:
        rel = path.relative_to(base).as_posix()
        item = InputItem(path=rel, abs_path=str(path.resolve()), kind="unknown")
        try:
            stat = path.stat()
            item.size, item.mtime_ns = stat.st_size, stat.st_mtime_ns
        except OSError as exc:
            item.status, item.reason = "error", f"cannot stat file: {_one_line(exc)}"
            items.append(item)
            continue
        if item.size == 0:
            item.status, item.reason = "error", "empty file (0 bytes)"
            items.append(item)
            continue
        if not os.access(path, os.R_OK):
            item.status, item.reason = "error", "file is not readable (permission denied)"
            items.append(item)
            continue
        item.kind = file_kind(path) or "unknown"
        if item.kind == "unknown":
            item.status, item.reason = "error", "not a recognised image (no DICOM header, not NIfTI/PNG/JPEG)"
        elif item.kind == "dicom":
            _read_dicom_header(item)
        if item.status is None and filters.active:
            why = filters.rejection(item)
            if why:
                item.status, item.reason = "skipped", f"filtered out: {why}"
        items.extend(_expand_frames(item, frames) if not series_mode else [item])
    if series_mode:
        items = _group_series(items)
    return items, ignored


def _has_pixel_data(path: str) -> bool:
    try:
        with quiet_dicom_warnings():
            ds = pydicom.dcmread(path, force=True, defer_size=1024)  # large values stay on disk
        return any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"))
    except DICOM_PARSE_ERRORS:  # the reader will report the problem per frame
        return True


def _expand_frames(item: InputItem, frames: str) -> list[InputItem]:
    if item.kind != "dicom" or item.status is not None or item.number_of_frames <= 1:
        return [item]
    if frames == "each":
        if not _has_pixel_data(item.abs_path):  # one row for a broken file, not one per frame
            item.status, item.reason = "error", f"no Pixel Data element (7FE0,0010) in a {item.number_of_frames}-frame instance"
            return [item]
        return [InputItem(**{**item.to_dict(), "frame": f}) for f in range(item.number_of_frames)]
    item.status = "error"
    item.reason = f"multi-frame instance ({item.number_of_frames} frames) given to a 2D model; use --frames each"
    return [item]


def _group_series(items: Sequence[InputItem]) -> list[InputItem]:
    """Replace the valid DICOM instances of each series by one item holding the series' files in order."""
    series: dict[str, list[InputItem]] = {}
    out: list[InputItem] = []
    for item in items:
        if item.kind == "dicom" and item.status is None and item.series_instance_uid:
            if item.series_instance_uid not in series:
                series[item.series_instance_uid] = []
                out.append(item)  # placeholder keeps the position of the series' first file
            series[item.series_instance_uid].append(item)
        else:
            out.append(item)
    grouped = []
    for item in out:
        members = series.get(item.series_instance_uid) if item.kind == "dicom" and item.status is None else None
        if not members:
            grouped.append(item)
            continue
        members = sorted(members, key=_sort_key_in_series)
        first = members[0]
        grouped.append(InputItem(**{
            **first.to_dict(),
            "files": [m.abs_path for m in members],
            "size": sum(m.size for m in members),
            "mtime_ns": max(m.mtime_ns for m in members),
            "sop_instance_uid": "",
            "path": str(Path(first.path).parent.as_posix()) + f"/[series {first.series_instance_uid}]",
        }))
    return grouped
