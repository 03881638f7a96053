"""Reading DICOM files within the read limits (:mod:`toolkit.transforms.limits`).

``pydicom.dcmread`` parses whatever a file holds: a 200 MB file of zeros named ``.dcm`` is parsed as
26 million empty elements (minutes), and a file in the Deflated Explicit VR Little Endian transfer
syntax is inflated whole before the first element is read, also with ``stop_before_pixels=True``
(``pydicom.filereader.read_partial`` inflates the rest of the file with one ``zlib.decompress``), so
780 KB can become 800 MB. :func:`read_dicom` reads instead:

1. the size on disk against ``max_dicom_bytes``;
2. a deflated data set inflated with a bound (``max_dicom_bytes``), never more;
3. the header (up to the pixel data, values over 64 KB left on disk) within a budget of bytes read
   (1/32 of ``max_dicom_bytes``), so a file of garbage stops after a few MB instead of being parsed in
   full (zeros where elements should be stop at once);
4. what the header declares: rows x columns x samples per frame, frames, all frames together; for
   encapsulated (compressed) pixel data, its length against the declared size (a ratio over
   ``max_ratio`` to 1 is refused: a few KB cannot hold hundreds of MB of image);
5. only then, when asked for, the whole data set.

:func:`check_compressed_frames` checks what the compressed frames' own headers (JPEG SOF, JPEG-LS,
JPEG 2000 SIZ) declare, before a decoder allocates it.
Refusals raise :class:`~toolkit.transforms.errors.DicomLimitError` (a ``ResourceLimitError`` and, like
every failure of the DICOM reader, a ``DicomReadError``).
"""

from __future__ import annotations

import io
import math
import os
import struct
import zlib

from toolkit.transforms.errors import DicomLimitError, ResourceLimitError
from toolkit.transforms.limits import MiB, ReadLimits, read_limits

__all__ = ["read_dicom", "check_compressed_frames", "codestream_size"]

DEFER_BYTES = 64 * 1024  # header reads leave larger values on disk (seeked over, not read)
# Most header bytes read before the pixel data: 1/32 of max_dicom_bytes (2 MiB by default; the largest real
# header in the shared data, an enhanced MR, reads 98 KB). Parsing garbage costs ~0.8 s per MiB.
HEADER_SHARE = 32
_ZERO_READS = 64  # consecutive all-zero reads: zeros where elements should be (no header has two in a row)
_PIXEL_TAGS = (0x7FE00010, 0x7FE00009, 0x7FE00008)  # Pixel Data, Double Float / Float Pixel Data
_RATIO_FLOOR = 16 * MiB  # images declaring less than this are never refused for their compression ratio


class _Budgeted(io.RawIOBase):
    """A binary file whose reads (not seeks) are counted; past ``budget`` bytes, a refusal."""

    def __init__(self, fp, budget: int, filename: str):
        self.fp, self.budget, self.filename, self.used, self.zeros = fp, budget, filename, 0, 0

    def read(self, size: int = -1) -> bytes:
        data = self.fp.read(size)
        self.used += len(data)
        self.zeros = self.zeros + 1 if len(data) >= 4 and not any(data) else 0
        if self.zeros > _ZERO_READS:
            raise DicomLimitError(
                self.filename, "zero bytes where DICOM header elements should be: not DICOM"
            )
        if self.used > self.budget:
            raise DicomLimitError(
                self.filename,
                f"more than {self.budget / MiB:g} MiB of DICOM header elements before the pixel data: not a "
                f"DICOM header, or one too large (to read it, raise the limit: CIT_MAX_DICOM_MB="
                f"{2 * HEADER_SHARE * self.budget // MiB} or more; the header may use 1/{HEADER_SHARE} of it)",
            )
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.fp.seek(offset, whence)

    def tell(self) -> int:
        return self.fp.tell()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True


def read_dicom(filename: str | os.PathLike, pixels: bool = False, limits: ReadLimits | None = None):
    """The data set of ``filename`` (read with ``force=True``): its header only (``pixels=False``: up to
    the pixel data, large values left on disk) or the whole of it, after the checks of the module
    docstring. Raises :class:`DicomLimitError` for a refusal; pydicom's own exceptions for files it
    cannot parse."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filereader import _read_file_meta_info, read_partial, read_preamble
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    filename = os.fspath(filename)
    limits = read_limits(limits)
    size = os.stat(filename).st_size
    limits.check_file_size(filename, "dicom", size, error=DicomLimitError)
    found: dict = {}

    def at_pixels(
        tag, vr, length
    ) -> bool:  # pydicom's stop_when: where the pixel data starts, and its length
        if tag in _PIXEL_TAGS:
            found.update(tag=int(tag), length=length, offset=source.tell())
            return True
        return False

    budget = limits.max_dicom_bytes // HEADER_SHARE
    with open(filename, "rb") as raw:
        budgeted = _Budgeted(raw, budget, filename)
        preamble = read_preamble(budgeted, True)
        # pydicom's own File Meta parser (also handles the implicit-VR meta some writers produce)
        meta = _read_file_meta_info(budgeted)
        if meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian:
            source = DicomBytesIO(_inflate(raw, filename, limits))
            total = len(source.getvalue())
            header = _parse(_Budgeted(source, budget, filename), at_pixels, preamble, meta)
        else:
            raw.seek(0)
            source, total = raw, size
            header = read_partial(
                _Budgeted(raw, budget, filename), at_pixels, defer_size=DEFER_BYTES, force=True
            )
            # deferred (large) values: read from the file by name, as dcmread's would be
            header.filename, header.fileobj_type, header.buffer = filename, open, None
            header.timestamp = os.stat(filename).st_mtime
        _check_header(header, filename, limits, found, total)
        if not pixels:
            return header
        source.seek(0)
        if isinstance(source, DicomBytesIO):
            return _parse(source, None, preamble, meta, defer=False)
        return read_partial(raw, None, force=True)


def _inflate(raw, filename: str, limits: ReadLimits) -> bytes:
    """The data set of a deflated file (``raw`` positioned after its File Meta), inflated with a bound."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    data = inflater.decompress(raw.read(), limits.max_dicom_bytes + 1)  # the file is <= max_dicom_bytes
    if len(data) > limits.max_dicom_bytes:
        raise DicomLimitError(
            filename,
            f"the deflated data set inflates to more than {limits.max_dicom_bytes / MiB:g} MiB, over the "
            f"limit for a DICOM file (to read it, raise the limit: CIT_MAX_DICOM_MB above "
            f"{limits.max_dicom_bytes / MiB:g})",
        )
    return data


def _parse(source, stop_when, preamble, meta, defer: bool = True):
    """A FileDataset from an inflated data set (explicit VR little endian) in ``source``."""
    from pydicom.dataset import FileDataset
    from pydicom.filereader import read_dataset

    dataset = read_dataset(
        source, False, True, stop_when=stop_when, defer_size=DEFER_BYTES if defer else None
    )
    buffer = source.fp if isinstance(source, _Budgeted) else source
    ds = FileDataset(buffer, dataset, preamble, meta, False, True)  # deferred values: from the buffer
    ds.set_original_encoding(False, True, dataset._character_set)
    return ds


def _int(ds, keyword: str, default: int = 0) -> int | None:
    """An integer attribute, ``default`` when absent or empty, None when invalid (reported elsewhere)."""
    try:
        value = ds.get(keyword)
        return default if value in (None, "") else int(value)
    except (TypeError, ValueError):
        return None


def _check_header(ds, filename: str, limits: ReadLimits, found: dict, total: int) -> None:
    rows, columns = _int(ds, "Rows"), _int(ds, "Columns")
    if not rows or not columns or rows < 0 or columns < 0:
        return  # no image attributes (or invalid ones): the readers say why
    samples = max(_int(ds, "SamplesPerPixel", 1) or 1, 1)
    frames = max(_int(ds, "NumberOfFrames", 1) or 1, 1)
    bits = max(_int(ds, "BitsAllocated", 8) or 8, 1)
    length = found.get("length")
    if length is not None and length != 0xFFFFFFFF:
        # native pixel data: what is decoded is what the data holds (a header claiming more frames than
        # its data holds is refused by the readers for that, naming both)
        frame_bytes = max(1, rows * columns * samples * bits // 8)
        frames = max(1, min(frames, length // frame_bytes))
    limits.check_image(filename, rows, columns, samples, frames, error=DicomLimitError)
    if length != 0xFFFFFFFF:
        return  # native pixel data: its length is what is read (and the file is within its limit)
    declared = rows * columns * samples * frames * math.ceil(bits / 8)
    available = max(1, total - found["offset"])
    if declared > _RATIO_FLOOR and declared > limits.max_ratio * available:
        raise DicomLimitError(
            filename,
            f"the header declares {declared / MiB:,.0f} MiB of pixels, held in only {available:,} bytes "
            f"of compressed data ({declared // available:,}:1, over the limit of {limits.max_ratio:,}:1 "
            f"for compressed pixel data; to read it, raise the limit: CIT_MAX_COMPRESSION_RATIO="
            f"{declared // available + 1} or more)",
        )


# ----------------------------------------------------------------------------------------------------
# what compressed frames declare


def codestream_size(frame: bytes) -> tuple[int, int, int] | None:
    """(rows, columns, components) a JPEG / JPEG-LS / JPEG Lossless (SOF marker) or JPEG 2000 / HTJ2K
    (SIZ marker, raw or in a JP2 wrapper) codestream declares, or None when it is neither."""
    siz = frame.find(b"\xff\x4f\xff\x51")  # SOC + SIZ
    if siz >= 0 and len(frame) >= siz + 42:
        xsiz, ysiz, xosiz, yosiz = struct.unpack(">IIII", frame[siz + 8 : siz + 24])
        (csiz,) = struct.unpack(">H", frame[siz + 40 : siz + 42])
        return max(0, ysiz - yosiz), max(0, xsiz - xosiz), csiz
    if not frame.startswith(b"\xff\xd8"):
        return None
    pos = 2
    while pos + 4 <= len(frame):
        if frame[pos] != 0xFF:
            return None
        marker = frame[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        (length,) = struct.unpack(">H", frame[pos + 2 : pos + 4])
        sof = 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC)
        if (sof or marker == 0xF7) and pos + 10 <= len(frame):  # SOFn, SOF55 (JPEG-LS)
            rows, columns = struct.unpack(">HH", frame[pos + 5 : pos + 9])
            return rows, columns, frame[pos + 9]
        if marker in (0xDA, 0xD9):  # start of scan / end of image before any frame header
            return None
        pos += 2 + length
    return None


def check_compressed_frames(ds, indices, filename: str, limits: ReadLimits | None = None) -> None:
    """Refuse before decoding when a compressed frame among ``indices`` (None: all) declares more than the
    limits allow, or a larger image than the DICOM header."""
    from pydicom.encaps import generate_frames

    limits = read_limits(limits)
    if "PixelData" not in ds or not ds["PixelData"].is_undefined_length:
        return
    n_frames = _int(ds, "NumberOfFrames", 1) or 1
    rows, columns = _int(ds, "Rows") or 0, _int(ds, "Columns") or 0
    wanted = None if indices is None else set(indices)
    try:
        for index, frame in enumerate(generate_frames(ds.PixelData, number_of_frames=n_frames)):
            if wanted is not None and index not in wanted:
                continue
            size = codestream_size(frame)
            if size is None:
                continue
            limits.check_image(
                filename, size[0], size[1], size[2], source="compressed frame", error=DicomLimitError
            )
            if size[0] * size[1] > rows * columns:
                raise DicomLimitError(
                    filename,
                    f"the compressed frame {index} declares {size[0]:,} x {size[1]:,} pixels, more than "
                    f"the {rows:,} x {columns:,} of the DICOM header",
                )
            if wanted is not None and index >= max(wanted):
                break
    except ResourceLimitError:
        raise
    except Exception:  # damaged encapsulation: the decoder reports it
        return
