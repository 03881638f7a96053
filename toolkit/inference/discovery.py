"""Finding the inputs of a batch-inference run: one work item per image (or per series / frame).

Files are recognised by content where it matters (DICOM without an extension is common in PACS
exports). A file larger on disk than the read limits allow (``toolkit.transforms.limits``) is an error
row without being opened. Every DICOM header is read once here, without pixel data and within the read
limits (``toolkit.transforms.dicom_io``: a deflated data set is inflated with a bound, a header declaring
more pixels or frames than allowed is an error row), so that inputs can be filtered
(modality, SOP class, body part), grouped by series and keyed for resuming; anything that cannot be
an input becomes an item that is already decided (status ``error`` or ``skipped``) with a one-line
reason, so that every file the user gave gets exactly one row.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import stat
import struct
import warnings
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pydicom.encaps import parse_basic_offsets, parse_fragments
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.uid import UID

from toolkit.data.files import DICOM_SUFFIXES, NIFTI_SUFFIXES, RASTER_SUFFIXES, VOLUME_SUFFIXES, file_kind
from toolkit.inference.locking import LOCK_NAME
from toolkit.inference.privacy import KEY_NAME, scrub_paths
from toolkit.transforms.dicom_io import read_dicom
from toolkit.transforms.errors import ResourceLimitError
from toolkit.transforms.limits import ReadLimits, read_limits

# File name endings that never hold an image: ignored without a row (counted in the summary).
_IMAGE_SUFFIXES = DICOM_SUFFIXES + NIFTI_SUFFIXES + RASTER_SUFFIXES + VOLUME_SUFFIXES
_DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
# What pydicom raises on a file that is not valid DICOM, found by feeding it truncated, byte-flipped
# and random versions of the real files in shared/data/dicom. Anything else is a bug and surfaces.
DICOM_PARSE_ERRORS = (
    OSError,
    EOFError,
    ValueError,
    NotImplementedError,
    InvalidDicomError,
    BytesLengthException,
    struct.error,
    zlib.error,
)
# What `cit infer` writes into its output folder. In an earlier run's output folder (it holds the
# run's run.json, or a lock file), also when it lies inside the input, these entries are never inputs.
OUTPUT_ENTRIES = frozenset(
    # "pacs": the retrieval cache and the ledger of stored SRs (toolkit.inference.pacs, kept with --keep-cache)
    {
        LOCK_NAME,
        KEY_NAME,
        "predictions.csv",
        "predictions.jsonl",
        "run.json",
        "summary.json",
        "parts",
        "sr",
        "gradcam",
        "pacs",
    }
)
_PIXEL_KEYWORDS = (("PixelData", None), ("FloatPixelData", 32), ("DoubleFloatPixelData", 64))


@dataclass
class InputItem:
    """One unit of work; becomes exactly one row of the output."""

    path: str  # relative to the input root ('/'-separated); the key users see in the CSV
    abs_path: str
    kind: str  # dicom | nifti | raster | volume (MHA / MHD / NRRD, 3D models only) | unknown
    # the raw name's digest, only when ``path`` had to be escaped for display (a newline, bytes that are not
    # UTF-8): "a<newline>b" and a literal "a\\nb" show alike, but must never share a resume key
    raw_path_digest: str = ""
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
        raw = f"|{self.raw_path_digest}" if self.raw_path_digest else ""
        return f"{self.path}|{self.size}|{self.mtime_ns}|{frame}{raw}"

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


@dataclass
class Ignored:
    """Entries below the input that get no row: files that cannot hold an image, and hidden entries
    (names starting with '.', e.g. ``.DS_Store``; a hidden folder counts once, unopened). Both are
    counted in the run's summary so that nothing is left out without a word."""

    other: int = 0
    hidden: int = 0
    earlier_output: list[str] = field(default_factory=list)  # entries of an earlier run's output folder

    def __bool__(self) -> bool:
        return bool(self.other or self.hidden or self.earlier_output)

    def __str__(self) -> str:
        parts = [f"{self.other} other file(s)"] if self.other or not self else []
        if self.hidden:
            parts.append(
                f"{self.hidden} hidden entr{'y' if self.hidden == 1 else 'ies'} (name starting with '.')"
            )
        if self.earlier_output:
            shown = ", ".join(display_path(e) for e in self.earlier_output[:4])
            more = ", ..." if len(self.earlier_output) > 4 else ""
            parts.append(
                f"{len(self.earlier_output)} entries of an earlier `cit infer` output ({shown}{more})"
            )
        return " and ".join(parts)


def is_earlier_output(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` is a `cit infer` output folder: it holds a lock file, or a ``run.json`` as the
    run writes it (a JSON object with the run's fingerprint and weights hash; read up to 1 MB)."""
    folder = Path(folder)
    if os.path.lexists(folder / LOCK_NAME):
        return True
    run_file = folder / "run.json"
    try:
        if not run_file.is_file() or run_file.stat().st_size > 1 << 20:
            return False
        record = json.loads(run_file.read_bytes())
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and {"fingerprint", "weights_sha256"} <= set(record)


@dataclass
class WalkProblem:
    """An entry below the input that is not walked or not read, and why (it becomes one row)."""

    path: Path
    status: str  # error | skipped
    reason: str
    kind: str = "unknown"


def walk_files(
    root: str | os.PathLike,
    exclude: str | os.PathLike | Iterable[str | os.PathLike] | None = None,
    problems: list[WalkProblem] | None = None,
) -> tuple[list[Path], Ignored]:
    """Candidate image files below ``root`` (sorted) and the count of what was left out (:class:`Ignored`).

    ``exclude``: folders not to enter (the run's own output when it lies inside the input).
    In an earlier run's output folder (:func:`is_earlier_output`), the entries that run writes
    (``OUTPUT_ENTRIES``) are skipped too, so results of this tool are never read as its inputs; they are
    counted and named in :class:`Ignored`. Symbolic links to folders are not
    followed. Entries that cannot be listed or are not regular files are added to ``problems`` (when
    given): a folder that cannot be read, a link to a folder, a link that loops or points nowhere
    (those last two also when their name is not an image's), a FIFO or device.
    """
    root = Path(root)
    if root.is_file():
        return [root], Ignored()
    if isinstance(exclude, (str, os.PathLike)):
        exclude = [exclude]
    excluded = {os.path.realpath(e) for e in exclude or ()}
    problems = problems if problems is not None else []
    found, ignored = [], Ignored()

    def unreadable(exc: OSError) -> None:
        folder = Path(exc.filename) if exc.filename else root
        problems.append(WalkProblem(folder, "error", f"cannot list folder: {os_reason(exc)}", kind="folder"))

    def earlier_output(name: str) -> None:
        ignored.earlier_output.append(str(Path(dirpath, name).relative_to(root).as_posix()))

    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable):
        own_output = is_earlier_output(dirpath)
        keep = []
        for d in sorted(dirnames):
            sub = Path(dirpath) / d
            if os.path.realpath(sub) in excluded:
                continue
            if own_output and d in OUTPUT_ENTRIES:
                earlier_output(d)
                continue
            if d.startswith("."):
                ignored.hidden += 1
                continue
            if os.path.islink(sub):  # not followed: it may loop or lead out of the input
                problems.append(
                    WalkProblem(sub, "skipped", "symbolic link to a folder (not followed)", kind="folder")
                )
                continue
            keep.append(d)
        dirnames[:] = keep
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if own_output and name in OUTPUT_ENTRIES:  # this tool's own files (its lock file is hidden)
                earlier_output(name)
                continue
            if name.startswith("."):
                ignored.hidden += 1
                continue
            try:
                mode = path.stat().st_mode
            except (
                OSError
            ):  # a link that loops or points nowhere, a file gone meanwhile: discovery says which
                found.append(path)
                continue
            if not stat.S_ISREG(mode) or _is_candidate(path):  # FIFOs and devices are reported, never opened
                found.append(path)
            else:
                ignored.other += 1
    return found, ignored


def os_reason(exc: OSError) -> str:
    """An OSError in words, without the file name it carries (an absolute path)."""
    if exc.errno == errno.ELOOP:
        return "symbolic link loop"
    if exc.errno == errno.ENAMETOOLONG:
        return "path too long for the file system"
    return exc.strerror or type(exc).__name__


def display_path(rel: str) -> str:
    """A relative path as printable text: bytes that are not UTF-8 as ``\\xNN``, control characters escaped
    (a newline in a file name would otherwise split a row of predictions.csv for naive readers)."""
    text = rel.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:300]


QUIET_LOGGERS = ("pydicom", "highdicom")


@contextlib.contextmanager
def quiet_dicom_warnings():
    """Silence pydicom / highdicom warnings for the block: they quote element values, which may be
    patient names or IDs, and logs must not hold those."""
    # only the loggers not yet quiet: setLevel clears the level cache of every logger (about 0.2 ms
    # each time), which per image was a sixth of a loader worker's time; workers stay quiet
    loggers = [lg for lg in map(logging.getLogger, QUIET_LOGGERS) if lg.level != logging.CRITICAL]
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


def _read_dicom_header(item: InputItem, limits: ReadLimits | None = None) -> None:
    with quiet_dicom_warnings():
        _read_dicom_header_unchecked(item, limits)


def _read_dicom_header_unchecked(item: InputItem, limits: ReadLimits | None = None) -> None:
    """Fill the DICOM attributes of ``item`` from its header, or mark it as an error."""
    try:
        ds = read_dicom(item.abs_path, limits=limits)  # header only, within the read limits
    except ResourceLimitError as exc:  # what the header declares (or the file's size) is over a limit
        item.status, item.reason = "error", exc.reason
        return
    except DICOM_PARSE_ERRORS as exc:  # a parse failure is a property of the file
        item.status, item.reason = "error", f"unreadable DICOM header: {_one_line(exc)}"
        return
    try:
        item.sop_class_uid = _text(
            ds.get("SOPClassUID", "") or getattr(ds.file_meta, "MediaStorageSOPClassUID", "")
        )
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
            item.reason = (
                f"not an image: {_sop_class_name(item.sop_class_uid)} has no Rows/Columns/Pixel Data"
            )


def _sort_key_in_series(item: InputItem) -> tuple:
    """Slice order of an instance: position along the slice normal, else InstanceNumber, else path."""
    try:
        with quiet_dicom_warnings():
            ds = read_dicom(item.abs_path)  # header only, within the read limits
        pos = [float(v) for v in ds.get("ImagePositionPatient", [])]
        ori = [float(v) for v in ds.get("ImageOrientationPatient", [])]
        if len(pos) == 3 and len(ori) == 6:
            normal = (
                ori[1] * ori[5] - ori[2] * ori[4],
                ori[2] * ori[3] - ori[0] * ori[5],
                ori[0] * ori[4] - ori[1] * ori[3],
            )
            return (0, sum(p * n for p, n in zip(pos, normal, strict=True)), item.path)
        number = ds.get("InstanceNumber")
        if number is not None:
            return (1, float(number), item.path)
    except (*DICOM_PARSE_ERRORS, TypeError):  # unreadable or non-numeric values (or a refusal): path order
        pass
    return (2, 0.0, item.path)


def discover_inputs(
    root: str | os.PathLike,
    filters: DicomFilters | None = None,
    frames: str = "reject",
    series_mode: bool = False,
    exclude: str | os.PathLike | Iterable[str | os.PathLike] | None = None,
) -> tuple[list[InputItem], Ignored]:
    """Work items for every candidate file below ``root`` and the count of entries left out (:class:`Ignored`).

    ``frames``: what to do with multi-frame DICOM for 2D models: ``reject`` (one error row) or
    ``each`` (one item per frame, after checking that the pixel data holds the declared frames).
    ``series_mode`` (3D models): valid DICOM instances of a series become one item listing its files
    in slice order (a lone instance too: the 3D reader then says why one image is not a volume);
    NIfTI, MHA / MHD / NRRD stay one item per file. Without it, MHA / MHD / NRRD files are error
    rows. ``exclude``: folders below ``root`` to leave out (the output of the run). Nothing here
    raises for what a file or folder holds: every problem is an item with status ``error`` (or
    ``skipped``) and a reason without absolute paths.
    """
    filters = filters or DicomFilters()
    limits = read_limits()
    root = Path(root)
    problems: list[WalkProblem] = []
    paths, ignored = walk_files(root, exclude, problems)
    base = root if root.is_dir() else root.parent
    known_roots = [(os.path.abspath(base), "<input>"), (os.path.realpath(base), "<input>")]
    items: list[InputItem] = []
    for problem in problems:
        rel = relative_path(problem.path, base)
        if problem.kind == "folder":
            rel["path"] += "/"
        items.append(
            InputItem(
                **rel,
                abs_path=os.path.abspath(problem.path),
                kind=problem.kind,
                status=problem.status,
                reason=scrub_paths(problem.reason, known_roots),
            )
        )
    with quiet_dicom_warnings():  # once for the folder: the per-file contexts inside then change nothing
        for path in paths:
            item = InputItem(**relative_path(path, base), abs_path=os.path.abspath(path), kind="unknown")
            _inspect(item, path, filters, limits)
            if not series_mode:
                _expand_frames_check(item, frames, limits)
                if item.kind == "volume" and item.status is None:
                    item.status, item.reason = (
                        "error",
                        "a 3D volume file (MHA / MHD / NRRD) given to a 2D model",
                    )
            if item.reason:  # library messages may quote the file's path: reasons never hold absolute paths
                item.reason = scrub_paths(
                    item.reason, [(item.abs_path, "<file>"), (os.path.realpath(path), "<file>"), *known_roots]
                )
            items.extend(_expand_frames(item, frames) if not series_mode else [item])
    items.sort(key=lambda it: (it.path, -1 if it.frame is None else it.frame))
    if series_mode:
        items = _group_series(items)
    return items, ignored


def relative_path(path: Path, base: Path) -> dict:
    """``path`` and ``raw_path_digest`` of an :class:`InputItem` for ``path`` below ``base``."""
    rel = Path(os.path.relpath(path, base) if path != base else ".").as_posix()
    shown = display_path(rel)
    digest = "" if shown == rel else hashlib.sha256(os.fsencode(rel)).hexdigest()[:16]
    return {"path": shown, "raw_path_digest": digest}


def _inspect(item: InputItem, path: Path, filters: DicomFilters, limits: ReadLimits | None = None) -> None:
    """Fill ``item`` from the file's metadata and header, or decide it (error / skipped) with a reason."""
    try:
        st = path.stat()
    except OSError as exc:
        link = os.path.islink(path)
        if link and exc.errno == errno.ENOENT:
            item.status, item.reason = "error", "dangling symbolic link (its target does not exist)"
        else:
            item.status, item.reason = "error", f"cannot stat {'link' if link else 'file'}: {os_reason(exc)}"
        return
    item.size, item.mtime_ns = st.st_size, st.st_mtime_ns
    if not stat.S_ISREG(st.st_mode):
        item.status, item.reason = "error", "not a regular file (FIFO, socket or device): not read"
        return
    if item.size == 0:
        item.status, item.reason = "error", "empty file (0 bytes)"
        return
    if not os.access(path, os.R_OK):
        item.status, item.reason = "error", "file is not readable (permission denied)"
        return
    item.kind = file_kind(path) or ("volume" if path.name.lower().endswith(VOLUME_SUFFIXES) else "unknown")
    if item.kind == "unknown":
        item.status, item.reason = (
            "error",
            "not a recognised image (no DICOM header, not NIfTI/PNG/JPEG/MHA/NRRD)",
        )
    else:
        try:  # refused by its size on disk before it is opened (a sparse file of zeros costs no disk)
            read_limits(limits).check_file_size(path, item.kind, item.size)
        except ResourceLimitError as exc:
            item.status, item.reason = "error", exc.reason
            return
        if item.kind == "dicom":
            _read_dicom_header(item, limits)
    if item.status is None and filters.active:
        why = filters.rejection(item)
        if why:
            item.status, item.reason = "skipped", f"filtered out: {why}"


def frame_count_problem(path: str, declared: int, limits: ReadLimits | None = None) -> str | None:
    """Why the pixel data of ``path`` cannot hold ``declared`` frames (one line), or None if it can.

    The header's NumberOfFrames is a claim: a 39 KB file may declare 100,000 frames. Native pixel data
    must be long enough for all frames (its length is read without loading it); encapsulated pixel
    data must have one offset table entry per frame, or at least one fragment per frame.
    """
    try:
        with quiet_dicom_warnings():
            ds = read_dicom(path, pixels=True, limits=limits)  # within the read limits
            return _frame_count_problem(ds, declared)
    except ResourceLimitError as exc:
        return exc.reason
    except (
        *DICOM_PARSE_ERRORS,
        TypeError,
    ) as exc:  # a broken or multi-valued element: the file's own problem
        return f"cannot read the pixel data of a {declared}-frame instance: {_one_line(exc)}"


def _frame_count_problem(ds, declared: int) -> str | None:
    found = next(((k, bits) for k, bits in _PIXEL_KEYWORDS if k in ds), None)
    if found is None:
        return f"no Pixel Data element (7FE0,0010) in a {declared}-frame instance"
    keyword, bits = found
    raw = ds.get_item(keyword, keep_deferred=True)
    length = getattr(raw, "length", None)
    if length is None:  # already a DataElement (small value): its bytes
        length = len(ds[keyword].value or b"") if not ds[keyword].is_undefined_length else 0xFFFFFFFF
    if length != 0xFFFFFFFF:  # native pixel data: rows x columns x samples x bits per frame
        rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        bits = bits or int(ds.get("BitsAllocated", 0) or 0)
        frame_bits = rows * columns * samples * bits
        if frame_bits <= 0:
            return f"invalid image size ({rows}x{columns}, {samples} sample(s) of {bits} bits)"
        if declared * frame_bits > 8 * length:
            return (
                f"NumberOfFrames {declared} does not match the pixel data: {length} bytes hold "
                f"{8 * length // frame_bits} frame(s) of {rows}x{columns}"
            )
        return None
    data = ds[keyword].value
    if "ExtendedOffsetTable" in ds:
        entries = len(ds.ExtendedOffsetTable or b"") // 8
        if entries != declared:
            return f"NumberOfFrames {declared} does not match the pixel data: its offset table lists {entries} frame(s)"
        return None
    offsets = parse_basic_offsets(data)
    if offsets and len(offsets) != declared:
        return f"NumberOfFrames {declared} does not match the pixel data: its offset table lists {len(offsets)} frame(s)"
    fragments, _ = parse_fragments(data)
    if fragments < declared:
        return (
            f"NumberOfFrames {declared} does not match the pixel data: {fragments} fragment(s) "
            "cannot hold that many frames"
        )
    return None


def _expand_frames_check(item: InputItem, frames: str, limits: ReadLimits | None = None) -> None:
    """Decide a multi-frame instance that cannot be expanded: rejected, or its pixel data cannot hold the
    declared frames (one row for the file, not one per declared frame)."""
    if item.kind != "dicom" or item.status is not None or item.number_of_frames <= 1:
        return
    if frames != "each":
        item.status = "error"
        item.reason = (
            f"multi-frame instance ({item.number_of_frames} frames) given to a 2D model; use --frames each"
        )
        return
    problem = frame_count_problem(item.abs_path, item.number_of_frames, limits)
    if problem:
        item.status, item.reason = "error", problem


def _expand_frames(item: InputItem, frames: str) -> list[InputItem]:
    """One item per frame of a multi-frame instance that passed ``_expand_frames_check``."""
    if item.kind != "dicom" or item.status is not None or item.number_of_frames <= 1 or frames != "each":
        return [item]
    return [InputItem(**{**item.to_dict(), "frame": f}) for f in range(item.number_of_frames)]


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
        members = (
            series.get(item.series_instance_uid) if item.kind == "dicom" and item.status is None else None
        )
        if not members:
            grouped.append(item)
            continue
        members = sorted(members, key=_sort_key_in_series)
        first = members[0]
        grouped.append(
            InputItem(
                **{
                    **first.to_dict(),
                    "files": [m.abs_path for m in members],
                    "size": sum(m.size for m in members),
                    "mtime_ns": max(m.mtime_ns for m in members),
                    "sop_instance_uid": "",
                    "path": str(Path(first.path).parent.as_posix())
                    + f"/[series {first.series_instance_uid}]",
                }
            )
        )
    return grouped
