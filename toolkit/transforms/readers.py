"""Image readers for MONAI's ``LoadImage``: a fast DICOM reader, NIfTI and raster readers, and a
reader that picks the right one by file content.

Conventions (all readers here):

* 2D images come out as ``(rows, cols)`` -- ``(H, W)`` as displayed, the layout torchvision / timm
  models are pre-trained on -- plus a trailing colour axis for RGB (``original_channel_dim`` is
  ``"no_channel"`` for grey and ``-1`` for RGB, so ``EnsureChannelFirstd`` gives ``(C, H, W)``).
  MONAI's own ``PILReader`` / ``PydicomReader`` default to the transposed ``(x, y)`` layout; mixing
  them with these readers would feed a network transposed images, so the chains only use these.
* NIfTI volumes keep MONAI's ``(x, y, z)`` voxel layout.
* Values are float32; for DICOM, bright = dense (MONOCHROME1 and Presentation LUT Shape INVERSE
  are inverted).
* Every failure raises :class:`ImageReadError` (:class:`DicomReadError` for DICOM), a
  ``ValueError`` whose one-line message names the file and the reason. A file whose header declares
  more than the read limits allow (:class:`~toolkit.transforms.limits.ReadLimits`: pixels, voxels,
  frames, bytes) is refused before decoding with :class:`ResourceLimitError` (:class:`DicomLimitError`
  for DICOM), naming what it declares, the limit and how to raise it. Inside a MONAI
  ``Compose`` it arrives wrapped in ``RuntimeError("applying transform ...")``;
  :func:`find_read_error` digs it out.

Why the readers do their I/O in ``get_data`` and not in ``read``: ``LoadImage`` catches any
exception raised by ``read()`` of a reader given to it and replaces it with a generic
``RuntimeError`` ("cannot find a suitable reader") that hides the cause. Exceptions from
``get_data()`` pass through unchanged, so ``read()`` here only records the file names.
"""

from __future__ import annotations

import io
import math
import os
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.data import ImageReader, NibabelReader
from monai.utils import ensure_tuple

from toolkit.data.files import NIFTI_SUFFIXES, RASTER_SUFFIXES, is_dicom_file
from toolkit.data.plugins import load_plugins
from toolkit.transforms.dicom_io import check_compressed_frames, read_dicom
from toolkit.transforms.errors import (
    DicomLimitError,
    DicomReadError,
    ImageReadError,
    ResourceLimitError,
    find_read_error,
)
from toolkit.transforms.jpeg_check import jpeg_problem
from toolkit.transforms.limits import ReadLimits, pillow_guard, read_limits

__all__ = [
    "ImageReadError",
    "DicomReadError",
    "ResourceLimitError",
    "DicomLimitError",
    "ReadLimits",
    "find_read_error",
    "DicomReader",
    "NiftiReader",
    "RasterReader",
    "MedicalImageReader",
    "ReaderOptions",
    "register_reader",
    "registered_readers",
]

PathLike = str | os.PathLike


def is_decoder_panic(exc: BaseException) -> bool:
    """A panic in a Rust extension (e.g. pylibjpeg-rle on a corrupt RLE stream): PyO3's PanicException."""
    return type(exc).__name__ == "PanicException" and type(exc).__module__ == "pyo3_runtime"


def first_line(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------------------------
# The registry MedicalImageReader reads: one decorator per reader (as timm's @register_model)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReaderOptions:
    """What a caller of :class:`MedicalImageReader` chose; each registered reader takes what applies
    to it in its ``from_options`` (a reader without one is built with no arguments)."""

    dicom_frame: int | str = "reject"
    max_size: int | None = None
    apply_voi: bool = False
    alpha: str = "drop"
    nifti_slice: int | str | None = None
    nifti_volume: int | None = None
    limits: ReadLimits | None = None


@dataclass(frozen=True)
class _Registered:
    kind: str
    reader: type[ImageReader]
    formats: tuple[str, ...]  # as an error about an unknown file lists them


_READERS: list[_Registered] = []  # in registration order; the last registered is asked first


def register_reader(kind: str, formats: Sequence[str] | None = None) -> Callable[[type], type]:
    """Class decorator: :class:`MedicalImageReader` reads with this MONAI ``ImageReader`` the files its
    ``verify_suffix`` claims (by extension or content). As MONAI's ``LoadImage`` does, the reader
    registered last is asked first, so a new reader may take files from the built-in ones; ``kind``
    names it (registering a kind again replaces it). ``formats`` names what it reads in the error
    about a file no reader claims (default: ``kind``)."""

    def add(cls: type) -> type:
        if not (isinstance(cls, type) and issubclass(cls, ImageReader)):
            raise TypeError(f"register_reader({kind!r}) takes a monai.data.ImageReader class, got {cls!r}")
        _READERS[:] = [r for r in _READERS if r.kind != kind]
        _READERS.append(_Registered(kind, cls, tuple(formats or (kind,))))
        return cls

    return add


def registered_readers() -> dict[str, type[ImageReader]]:
    """Kind -> reader class, in the order :class:`MedicalImageReader` asks them (after importing the
    modules ``CIT_PLUGINS`` names: :mod:`toolkit.data.plugins`)."""
    load_plugins()
    return {r.kind: r.reader for r in reversed(_READERS)}


def _build_reader(cls: type[ImageReader], options: ReaderOptions) -> ImageReader:
    from_options = getattr(cls, "from_options", None)
    return from_options(options) if from_options is not None else cls()


# --------------------------------------------------------------------------------------------
# Early shrinking shared by the readers
# --------------------------------------------------------------------------------------------


def shrink_factor(shape: Sequence[int], max_size: int | None) -> int:
    """Largest integer factor ``k`` with ``ceil(side / k) >= max_size`` for every side (1 = none)."""
    if not max_size or max_size <= 0:
        return 1
    k = max(1, min(int(s) for s in shape) // int(max_size))
    while k > 1 and any(math.ceil(s / k) < max_size for s in shape):
        k -= 1
    return k


_TORCH_DTYPES = {
    np.dtype(t) for t in ("uint8", "int8", "uint16", "int16", "int32", "int64", "float32", "float64")
}


def box_shrink(arr: np.ndarray, k: int, channel_last: bool = False, rows_per_strip: int = 64) -> np.ndarray:
    """Average ``k x k`` blocks of ``arr`` (``(H, W)`` or ``(H, W, C)`` with ``channel_last``).

    This is an exact area downsample (edge blocks average only the pixels they cover). It works
    in strips of rows so a large integer image is never copied to float32 as a whole.
    """
    if k <= 1:
        return arr.astype(np.float32, copy=False)
    if arr.dtype not in _TORCH_DTYPES:  # big-endian, bool, uint32 ...: not convertible by torch
        arr = arr.astype(np.float32)
    out = []
    step = k * rows_per_strip
    for start in range(0, arr.shape[0], step):
        strip = torch.from_numpy(np.ascontiguousarray(arr[start : start + step])).to(torch.float32)
        strip = strip.permute(2, 0, 1)[None] if channel_last else strip[None, None]
        out.append(F.avg_pool2d(strip, k, k, ceil_mode=True)[0])
    result = torch.cat(out, dim=1)
    result = result.permute(1, 2, 0) if channel_last else result[0]
    return result.numpy()


# --------------------------------------------------------------------------------------------
# DICOM
# --------------------------------------------------------------------------------------------

# Names pydicom does not know (yet) for transfer syntaxes it cannot decode.
_EXTRA_TS_NAMES = {
    "1.2.840.10008.1.2.4.110": "JPEG XL Lossless",
    "1.2.840.10008.1.2.4.111": "JPEG XL JPEG Recompression",
    "1.2.840.10008.1.2.4.112": "JPEG XL",
    "1.2.840.10008.1.2.8.1": "Deflated Image Frame Compression",
}

# Identifying metadata that is safe to keep (no patient name / ID / birth date in image meta).
_META_TAGS = {
    "Modality": "modality",
    "SOPInstanceUID": "sop_instance_uid",
    "SeriesInstanceUID": "series_instance_uid",
    "StudyInstanceUID": "study_instance_uid",
    "SOPClassUID": "sop_class_uid",
}


@dataclass
class _Decoded:
    array: np.ndarray  # (H, W), (H, W, 3) or frames-first (F, H, W) when frame="all"
    meta: dict[str, Any] = field(default_factory=dict)


@register_reader("dicom", formats=("DICOM",))
class DicomReader(ImageReader):
    """Fast DICOM reader for ``LoadImage(d)``: pydicom (+ pylibjpeg / openjpeg plugins) decoding,
    Modality LUT / rescale, optional VOI LUT, MONOCHROME1 / INVERSE inversion, colour conversion.

    Why our own: MONAI's ``PydicomReader`` spends 3-4x the decoder's time on array copies (six
    ``np.ascontiguousarray`` calls, ~42 ms for a 2048^2 16-bit image) and on building metadata
    with ``to_json_dict`` (19-22 ms, it base64-encodes the pixel data); see
    ``../shared/perf-notes.md``. This reader makes one float32 copy (of the shrunk image when
    ``max_size`` is set) and keeps only the metadata later steps need.

    Args:
        frame: what to do with multi-frame objects: an ``int`` frame index, ``"middle"``,
            ``"all"`` (frames become channels: ``(F, H, W)`` grey, ``(3F, H, W)`` colour in
            frame-major order) or ``"reject"`` (default: raise :class:`DicomReadError` naming the
            file and the frame count). Single frames are only decoded when one is selected.
        apply_voi: apply the VOI LUT / first window centre-width when present (default False:
            the normalisation presets choose windows, e.g. ``ct_window``, and a stored display
            window would silently clip the data differently per file).
        max_size: shrink early: average ``k x k`` blocks (largest integer ``k`` keeping both
            sides >= ``max_size``) right after decoding, before the float conversion, so a
            2048 px image headed for 224 px never exists as a full float32 copy. The reported
            ``spacing`` / ``affine`` / ``spatial_shape`` describe the shrunk grid (spacing x k).
        force: read files without the DICOM preamble / File Meta (old ACR-NEMA style). The
            transfer syntax is then taken from the encoding pydicom detects (implicit VR little
            endian for ACR-NEMA files).
        j2k_reduce: with ``max_size``, decode large grey unsigned JPEG 2000 frames at a reduced
            wavelet resolution level (10-15x faster: ~70 ms instead of ~1.1 s at 2048 px), then
            box-shrink the rest. The level is a wavelet low-pass sampled at every 2^r-th pixel,
            so its grid sits half a block off the box average of the uncompressed path (mean
            difference ~0.5 % of the value range once aligned, ~2 % without, on the WG04 / pydicom
            test files); set False for bit-for-bit the same sampling as other transfer syntaxes.
        limits: the read limits (default: :meth:`ReadLimits.from_env` at each read). The header, a
            deflated data set's inflated size and each compressed frame's own header are checked
            before anything is decoded (:mod:`toolkit.transforms.dicom_io`).

    Metadata: ``spatial_shape``, ``spacing`` (row, col; PixelSpacing, else ImagerPixelSpacing,
    else 1.0 with ``spacing_source`` "none"), ``affine`` (4x4, scaled with ``spacing``),
    ``modality``, ``photometric``, ``frames``, ``frame_index``, ``sop_instance_uid``,
    ``series_instance_uid``, ``study_instance_uid``, ``sop_class_uid``, ``shrink_factor``,
    ``original_channel_dim``. No patient name / ID.
    """

    def __init__(
        self,
        frame: int | str = "reject",
        apply_voi: bool = False,
        max_size: int | None = None,
        force: bool = True,
        j2k_reduce: bool = True,
        limits: ReadLimits | None = None,
    ):
        super().__init__()
        if not (isinstance(frame, int) or frame in ("middle", "all", "reject")):
            raise ValueError(f"frame must be an int, 'middle', 'all' or 'reject', got {frame!r}")
        self.frame = frame
        self.apply_voi = apply_voi
        self.max_size = max_size
        self.force = force
        self.j2k_reduce = j2k_reduce
        self.limits = limits

    @classmethod
    def from_options(cls, options: ReaderOptions) -> DicomReader:
        return cls(
            frame=options.dicom_frame,
            apply_voi=options.apply_voi,
            max_size=options.max_size,
            limits=options.limits,
        )

    # -- ImageReader API --------------------------------------------------------------------
    def verify_suffix(self, filename: Sequence[PathLike] | PathLike) -> bool:
        """True if every file is DICOM by content (extension not needed; ACR-NEMA recognised)."""
        return all(is_dicom_file(f) for f in ensure_tuple(filename))

    def read(self, data: Sequence[PathLike] | PathLike, **kwargs) -> Any:
        """Record the file name(s); decoding happens in :meth:`get_data` (see module docstring)."""
        names = tuple(os.fspath(f) for f in ensure_tuple(data))
        return names if len(names) > 1 else names[0]

    def get_data(self, img) -> tuple[np.ndarray, dict]:
        """Decode the file(s) recorded by :meth:`read`; several files are stacked as channels."""
        names = ensure_tuple(img)
        decoded = [self.decode(name) for name in names]
        if len(decoded) == 1:
            return decoded[0].array, decoded[0].meta
        meta = dict(decoded[0].meta)
        shape = decoded[0].array.shape
        for d in decoded[1:]:
            if d.array.shape != shape:
                raise DicomReadError(
                    d.meta["filename_or_obj"], f"shape {d.array.shape} differs from {shape} of {names[0]}"
                )
        channels_first = []
        for d in decoded:
            channel_dim = d.meta["original_channel_dim"]
            if channel_dim == "no_channel":
                channels_first.append(d.array[None])
            else:
                channels_first.append(d.array if channel_dim == 0 else np.moveaxis(d.array, -1, 0))
        meta["original_channel_dim"] = 0
        return np.concatenate(channels_first), meta

    # -- decoding -----------------------------------------------------------------------------
    def decode(self, filename: PathLike) -> _Decoded:
        """Read and decode one DICOM file; any failure raises :class:`DicomReadError`."""
        try:
            return self._decode(os.fspath(filename))
        except DicomReadError:
            raise
        except (MemoryError, KeyboardInterrupt):
            raise
        except Exception as exc:  # anything pydicom / numpy / a plugin raises on bad input
            raise DicomReadError(filename, f"{type(exc).__name__}: {first_line(exc)}") from exc
        except BaseException as exc:
            # a Rust decoder (pylibjpeg-rle) panics on some corrupt streams: PyO3 raises its PanicException,
            # a BaseException, which would otherwise stop a whole training or evaluation run
            if not is_decoder_panic(exc):
                raise
            raise DicomReadError(filename, f"the decoder crashed on this file: {first_line(exc)}") from exc

    def _decode(self, filename: str) -> _Decoded:
        import pydicom
        from pydicom.errors import InvalidDicomError

        if not os.path.isfile(filename):
            raise DicomReadError(filename, "file not found")
        if not is_dicom_file(filename):
            raise DicomReadError(filename, "not a DICOM file (no DICM preamble and no recognisable header)")
        limits = read_limits(self.limits)
        try:
            if self.force:  # within the read limits (also for deflated files): see dicom_io
                ds = read_dicom(filename, pixels=True, limits=limits)
            else:
                limits.check_file_size(filename, "dicom", error=DicomLimitError)
                ds = pydicom.dcmread(filename, force=False)
        except DicomReadError:
            raise
        except (InvalidDicomError, EOFError, OSError, ValueError, TypeError, KeyError, zlib.error) as exc:
            raise DicomReadError(
                filename, f"unreadable or truncated DICOM header: {first_line(exc)}"
            ) from exc

        self._ensure_transfer_syntax(ds, filename)
        self._check_pixel_data(ds, filename)
        n_frames = self._number_of_frames(ds, filename)
        frame_index = self._frame_index(n_frames, filename)
        # what the compressed frame(s) to decode declare, before a decoder allocates it
        check_compressed_frames(ds, None if frame_index is None else [frame_index], filename, limits)
        self._trust_j2k_signedness(ds)
        arr, reduced_by = self._pixels(ds, frame_index, n_frames, filename, limits)
        return self._to_output(ds, arr, n_frames, frame_index, filename, reduced_by)

    @staticmethod
    def _ensure_transfer_syntax(ds, filename: str) -> None:
        """Files without File Meta (ACR-NEMA / headless): use the encoding pydicom detected."""
        from pydicom.dataset import FileMetaDataset
        from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

        meta = getattr(ds, "file_meta", None)
        if meta is not None and meta.get("TransferSyntaxUID"):
            return
        implicit, little = getattr(ds, "original_encoding", (None, None))
        if implicit is None:
            raise DicomReadError(
                filename, "no Transfer Syntax UID in the File Meta and the encoding cannot be determined"
            )
        if meta is None:
            ds.file_meta = FileMetaDataset()
        if implicit:
            uid = ImplicitVRLittleEndian
        else:
            uid = ExplicitVRLittleEndian if little else ExplicitVRBigEndian
        ds.file_meta.TransferSyntaxUID = uid

    @staticmethod
    def _check_pixel_data(ds, filename: str) -> None:
        from pydicom.pixels import get_decoder
        from pydicom.uid import UID

        if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
            sop = ds.get("SOPClassUID")
            if sop and "Image" not in UID(str(sop)).name:
                raise DicomReadError(
                    filename, f"non-image object ({UID(str(sop)).name}, SOP Class {sop}): no pixel data"
                )
            raise DicomReadError(filename, "no Pixel Data element (7FE0,0010)")
        elem = ds["PixelData"] if "PixelData" in ds else None
        if elem is not None and not elem.value:
            raise DicomReadError(filename, "Pixel Data element is empty")
        for keyword in ("Rows", "Columns", "BitsAllocated"):
            value = ds.get(keyword)
            if value in (None, "") or int(value) <= 0:
                raise DicomReadError(filename, f"missing or invalid {keyword} ({value!r})")
        tsyntax = ds.file_meta.TransferSyntaxUID
        name = _EXTRA_TS_NAMES.get(str(tsyntax), UID(str(tsyntax)).name)
        try:
            decoder = get_decoder(tsyntax)
        except NotImplementedError:
            raise DicomReadError(
                filename, f"unsupported transfer syntax {tsyntax} ({name}): no decoder in pydicom"
            ) from None
        if not decoder.is_available:
            raise DicomReadError(
                filename,
                f"transfer syntax {tsyntax} ({name}) needs a decoding plugin that is not installed "
                f"(e.g. pylibjpeg-openjpeg / pylibjpeg-libjpeg / pylibjpeg-rle)",
            )

    @staticmethod
    def _number_of_frames(ds, filename: str) -> int:
        raw = ds.get("NumberOfFrames", 1)
        try:
            n = int(raw) if raw not in (None, "") else 1
        except (TypeError, ValueError):
            raise DicomReadError(
                filename, f"invalid value {str(raw)!r} for NumberOfFrames (0028,0008)"
            ) from None
        if n < 1:
            raise DicomReadError(filename, f"invalid NumberOfFrames {n}")
        return n

    def _frame_index(self, n_frames: int, filename: str) -> int | None:
        """Index of the frame to decode, or None to decode every frame."""
        if n_frames == 1:
            return None
        if self.frame == "reject":
            raise DicomReadError(
                filename,
                f"multi-frame object with {n_frames} frames; choose frame=<index>, 'middle' or 'all'",
            )
        if self.frame == "all":
            return None
        if self.frame == "middle":
            return n_frames // 2
        index = int(self.frame)
        if not -n_frames <= index < n_frames:
            raise DicomReadError(filename, f"frame {index} out of range for {n_frames} frames")
        return index % n_frames

    @staticmethod
    def _j2k_frame(ds, frame_index: int | None) -> tuple[bytes, int, bool] | None:
        """(codestream, precision, signed) of a JPEG 2000 frame from its SIZ marker, else None."""
        from pydicom.encaps import generate_frames
        from pydicom.uid import JPEG2000TransferSyntaxes

        if ds.file_meta.TransferSyntaxUID not in JPEG2000TransferSyntaxes:
            return None
        try:
            frames = generate_frames(ds.PixelData, number_of_frames=int(ds.get("NumberOfFrames", 1) or 1))
            for _ in range(frame_index or 0):
                next(frames)
            frame = next(frames)
        except Exception:  # leave it to the decoder to report
            return None
        siz = frame.find(b"\xff\x4f\xff\x51")  # SOC + SIZ marker (also inside a JP2 wrapper)
        ssiz = siz + 2 + 2 + 2 + 2 + 32 + 2  # SOC, SIZ, Lsiz, Rsiz, 8 x 4-byte sizes, Csiz
        if siz < 0 or len(frame) <= ssiz:
            return None
        return frame, (frame[ssiz] & 0x7F) + 1, bool(frame[ssiz] & 0x80)

    def _trust_j2k_signedness(self, ds) -> None:
        """Some CT vendors (e.g. Toshiba) store signed JPEG 2000 codestreams but declare unsigned
        Pixel Representation; pydicom then follows the header and turns -2048 padding into 63488.
        Like GDCM, trust the codestream's SIZ signedness bit for such files."""
        if int(ds.get("PixelRepresentation", 0) or 0) != 0 or int(ds.get("SamplesPerPixel", 1) or 1) != 1:
            return
        info = self._j2k_frame(ds, 0)
        if info is not None and info[2]:
            ds.PixelRepresentation = 1

    def _reduced_j2k(
        self, ds, frame_index: int | None, n_frames: int, filename: str, limits: ReadLimits
    ) -> tuple[np.ndarray, int] | None:
        """Decode a big grey JPEG 2000 frame at a reduced resolution level (Pillow / OpenJPEG
        ``reduce``), about 10x faster than a full decode (perf notes: a 2048 px frame takes ~1.1 s).
        Only for unsigned single-component frames when ``max_size`` allows a level >= 1;
        returns (array, factor) or None to decode fully. The level is a wavelet low-pass, close
        to (not identical with) a box average. Pillow's decompression-bomb refusal is a refusal here
        too (never a fall-back to the full decode)."""
        if not (self.j2k_reduce and self.max_size) or (frame_index is None and n_frames > 1):
            return None
        if int(ds.get("SamplesPerPixel", 1) or 1) != 1 or int(ds.get("PixelRepresentation", 0) or 0) != 0:
            return None
        rows, cols = int(ds.Rows), int(ds.Columns)
        level = 0
        while min(math.ceil(rows / 2 ** (level + 1)), math.ceil(cols / 2 ** (level + 1))) >= self.max_size:
            level += 1
        info = self._j2k_frame(ds, frame_index) if level else None
        if info is None or info[2] or info[1] > 16:
            return None
        frame, precision, _ = info
        from PIL import Image

        try:
            with pillow_guard(limits), Image.open(io.BytesIO(frame)) as im:
                im.reduce = level
                im.load()
                if im.mode not in ("L", "I;16"):
                    return None
                arr = np.array(im)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise DicomLimitError(filename, f"JPEG 2000 frame refused by Pillow: {first_line(exc)}") from exc
        except Exception:  # Pillow rejects some valid streams: fall back to pydicom
            return None
        if im.mode == "I;16" and precision < 16:
            arr >>= 16 - precision  # Pillow scales samples up to 16 bits
        if arr.shape != (math.ceil(rows / 2**level), math.ceil(cols / 2**level)):
            return None
        return arr, 2**level

    def _pixels(
        self, ds, frame_index: int | None, n_frames: int, filename: str, limits: ReadLimits
    ) -> tuple[np.ndarray, int]:
        """Decoded pixels and the factor they are already reduced by."""
        from pydicom.pixels import pixel_array

        reduced = self._reduced_j2k(ds, frame_index, n_frames, filename, limits)
        if reduced is not None:
            return reduced
        try:
            arr = pixel_array(ds, index=frame_index)
        except Exception as exc:
            raise DicomReadError(
                filename, f"cannot decode pixel data (corrupt or truncated?): {first_line(exc)}"
            ) from exc
        if arr.size == 0:
            raise DicomReadError(filename, "decoded pixel data is empty")
        return arr, 1

    def _to_output(
        self, ds, arr: np.ndarray, n_frames: int, frame_index: int | None, filename: str, reduced_by: int = 1
    ) -> _Decoded:
        from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut

        photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        multi = frame_index is None and n_frames > 1  # frames on axis 0
        colour = samples == 3 or photometric == "PALETTE COLOR"

        if photometric == "PALETTE COLOR":
            arr = apply_color_lut(arr, ds)
        if colour:
            if arr.ndim != (4 if multi else 3) or arr.shape[-1] != 3:
                raise DicomReadError(filename, f"colour image has unexpected shape {arr.shape}")
            frames = arr if multi else arr[None]
            k = shrink_factor(frames.shape[1:3], self.max_size)
            out = np.stack([box_shrink(f, k, channel_last=True) for f in frames])
            out = out[0] if not multi else np.moveaxis(out, -1, 1).reshape(-1, *out.shape[1:3])
            channel_dim: Any = -1 if not multi else 0
        else:
            # Grey: Modality LUT (sequence: non-linear, before shrinking), optional VOI, inversion.
            lo, hi = self._stored_range(ds)
            has_lut_seq = bool(ds.get("ModalityLUTSequence"))
            if has_lut_seq:
                arr = apply_modality_lut(arr, ds)
                # Output range of the LUT over every storable value (LUTs are small: <= 65536 entries).
                lut_range = apply_modality_lut(np.arange(lo, hi + 1, dtype=np.int64), ds)
                lo, hi = float(lut_range.min()), float(lut_range.max())
            slope = float(ds.get("RescaleSlope", 1) or 1) if not has_lut_seq else 1.0
            intercept = float(ds.get("RescaleIntercept", 0) or 0) if not has_lut_seq else 0.0
            if self.apply_voi and (ds.get("VOILUTSequence") or ds.get("WindowCenter") is not None):
                arr = apply_voi_lut(arr * slope + intercept if (slope, intercept) != (1.0, 0.0) else arr, ds)
                slope, intercept = 1.0, 0.0
                lo, hi = float(arr.min()), float(arr.max())
            frames = arr if multi else arr[None]
            k = shrink_factor(frames.shape[1:3], self.max_size)
            out = np.stack([box_shrink(f, k) for f in frames])  # float32
            if (slope, intercept) != (1.0, 0.0):
                out *= np.float32(slope)
                out += np.float32(intercept)
                lo, hi = sorted((lo * slope + intercept, hi * slope + intercept))
            if (
                photometric == "MONOCHROME1"
                or str(ds.get("PresentationLUTShape", "")).strip().upper() == "INVERSE"
            ):
                # Invert around the nominal value range so every file of a series maps alike.
                np.subtract(np.float32(lo + hi), out, out=out)
            out = out[0] if not multi else out
            channel_dim = "no_channel" if not multi else 0

        return _Decoded(
            out.astype(np.float32, copy=False),
            self._meta(ds, out, colour, multi, k * reduced_by, n_frames, frame_index, filename, channel_dim),
        )

    @staticmethod
    def _stored_range(ds) -> tuple[float, float]:
        bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)) or 16)
        if int(ds.get("PixelRepresentation", 0) or 0) == 1:
            return float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
        return 0.0, float(2**bits - 1)

    @staticmethod
    def _meta(ds, out, colour, multi, k, n_frames, frame_index, filename, channel_dim) -> dict:
        spatial = tuple(out.shape[1:3]) if multi else tuple(out.shape[:2])
        spacing_source, spacing = "none", (1.0, 1.0)
        for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
            value = ds.get(keyword)
            try:
                if value is not None and len(value) == 2 and float(value[0]) > 0 and float(value[1]) > 0:
                    spacing_source, spacing = keyword, (float(value[0]), float(value[1]))
                    break
            except (TypeError, ValueError):
                continue
        spacing = (spacing[0] * k, spacing[1] * k)
        affine = np.diag([spacing[0], spacing[1], 1.0, 1.0])
        meta = {
            "spatial_shape": np.asarray(spatial),
            "spacing": np.asarray(spacing),
            "spacing_source": spacing_source,
            "affine": affine,
            "original_affine": affine.copy(),
            "original_channel_dim": channel_dim,
            "photometric": str(ds.get("PhotometricInterpretation", "")).strip(),
            "frames": n_frames,
            "frame_index": -1 if frame_index is None else frame_index,
            "shrink_factor": k,
            "filename_or_obj": filename,
        }
        for keyword, key in _META_TAGS.items():
            meta[key] = str(ds.get(keyword, "") or "")
        return meta


# --------------------------------------------------------------------------------------------
# NIfTI
# --------------------------------------------------------------------------------------------


@register_reader("nifti", formats=("NIfTI",))
class NiftiReader(NibabelReader):
    """MONAI's ``NibabelReader`` with clear errors, RGB24 support, read limits and single-slice reads.

    * RGB24 volumes (NIfTI datatype 128, a structured numpy dtype) become a trailing axis of 3
      channels (``original_channel_dim`` -1).
    * 4D volumes keep MONAI's behaviour (the 4th axis becomes the channel axis) and record
      ``n_volumes`` in the metadata, so :class:`~toolkit.transforms.utility.SelectSliced` can
      ask for a volume index.
    * NaN / Inf voxels, unreadable or truncated files raise :class:`ImageReadError` naming the file.
    * The header's dimensions (and the size on disk) are checked against the read limits (``limits``,
      default :meth:`ReadLimits.from_env`) before any voxel is read: :class:`ResourceLimitError`.
    * ``slice_index`` (``"middle"`` or an int; default None: the whole volume): read only that slice
      across the last spatial axis (of volume ``volume`` of a 4D image) through nibabel's array proxy,
      as ``SelectSlice(axis=-1, index=slice_index, volume=volume)`` would take it from the whole
      volume (same errors, ``slice_index`` / ``slice_axis`` in the metadata); 2D models never hold
      the whole volume. Files of fewer than 3 dimensions are read whole.
    """

    def __init__(
        self,
        slice_index: int | str | None = None,
        volume: int | None = None,
        limits: ReadLimits | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not (slice_index is None or isinstance(slice_index, int) or slice_index == "middle"):
            raise ValueError(f"slice_index must be None, 'middle' or an int, got {slice_index!r}")
        self.slice_index = slice_index
        self.volume = volume
        self.limits = limits
        self._slicing: tuple | None = None  # (slice, volume) while get_data reads one slice

    @classmethod
    def from_options(cls, options: ReaderOptions) -> NiftiReader:
        return cls(slice_index=options.nifti_slice, volume=options.nifti_volume, limits=options.limits)

    def verify_suffix(self, filename: Sequence[PathLike] | PathLike) -> bool:
        """True if every name ends in .nii / .nii.gz (any case); MONAI's test also takes ``x.nii.png``."""
        return all(os.fspath(f).lower().endswith(NIFTI_SUFFIXES) for f in ensure_tuple(filename))

    def read(self, data, **kwargs):
        """Record the file name(s); loading happens in :meth:`get_data` (see module docstring)."""
        names = tuple(os.fspath(f) for f in ensure_tuple(data))
        return names if len(names) > 1 else names[0]

    def get_data(self, img) -> tuple[np.ndarray, dict]:
        """Load the recorded NIfTI file(s) with nibabel through MONAI's reader."""
        names = ensure_tuple(img)
        limits = read_limits(self.limits)
        try:
            for name in names:
                limits.check_file_size(name, "volume")
            loaded = NibabelReader.read(self, names)
            for name, image in zip(names, ensure_tuple(loaded), strict=True):
                dtype = image.get_data_dtype()
                channels = [len(dtype.names)] if dtype.names else []
                limits.check_volume(name, [*image.shape, *channels])
            self._slicing = self._slice_of(loaded, names[0]) if len(names) == 1 else None
            arr, meta = NibabelReader.get_data(self, loaded)
        except ImageReadError:
            raise
        except Exception as exc:
            raise ImageReadError(
                names[0], f"cannot read NIfTI: {type(exc).__name__}: {first_line(exc)}"
            ) from exc
        finally:
            slicing, self._slicing = self._slicing, None
        spatial_rank = len(meta["spatial_shape"])
        if arr.dtype.names:  # RGB24 / RGBA32 structured voxels -> trailing colour axis
            if len(arr.dtype.names) not in (3, 4):
                raise ImageReadError(names[0], f"unsupported structured NIfTI datatype {arr.dtype}")
            arr = np.stack([arr[c] for c in arr.dtype.names[:3]], axis=-1)
            meta["original_channel_dim"] = -1
        elif arr.ndim == spatial_rank + 1:  # 4D: volumes (time, ASL label/control ...) on the last axis
            meta["n_volumes"] = int(arr.shape[-1])
        elif arr.ndim > spatial_rank + 1:
            raise ImageReadError(names[0], f"unsupported NIfTI shape {arr.shape} (more than 4 dimensions)")
        if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
            raise ImageReadError(names[0], f"unsupported NIfTI datatype {arr.dtype}")
        if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
            n_bad = int((~np.isfinite(arr)).sum())
            what = "of the slice's" if slicing else "of"
            raise ImageReadError(names[0], f"{n_bad} {what} {arr.size} voxels are NaN or Inf")
        if slicing:
            meta["slice_index"], meta["slice_axis"] = slicing[0], -1
        meta["filename_or_obj"] = names[0]
        return arr.astype(np.float32, copy=False), meta

    def _slice_of(self, image, name: str) -> tuple[int, int | None] | None:
        """(slice, volume) to read from ``image`` when reading one slice, as SelectSlice would choose
        them (and refuse them); None to read the whole file."""
        shape = tuple(int(s) for s in image.shape)
        if self.slice_index is None or len(shape) < 3:
            return None
        if len(shape) > 4:
            raise ImageReadError(name, f"unsupported NIfTI shape {shape} (more than 4 dimensions)")
        volume = None
        if len(shape) == 4 and shape[3] > 1:
            if self.volume is None:
                raise ImageReadError(
                    name, f"4D image with {shape[3]} volumes: choose one with volume=<index>"
                )
            if not -shape[3] <= self.volume < shape[3]:
                raise ImageReadError(name, f"volume {self.volume} out of range for {shape[3]} volumes")
            volume = self.volume % shape[3]
        elif len(shape) == 4:
            volume = 0
        size = shape[2]
        index = size // 2 if self.slice_index == "middle" else int(self.slice_index)
        if not -size <= index < size:
            raise ImageReadError(name, f"slice {index} out of range for {size} slices along axis -1")
        return index % size, volume

    # MONAI's NibabelReader.get_data builds the metadata from these: one slice when slicing
    def _get_spatial_shape(self, img):
        shape = NibabelReader._get_spatial_shape(self, img)
        return shape[:2] if self._slicing else shape

    def _get_array_data(self, img, filename):
        if not self._slicing:
            return NibabelReader._get_array_data(self, img, filename)
        index, volume = self._slicing
        proxy = img.dataobj  # reads only the bytes of the slice
        return np.asanyarray(proxy[:, :, index] if volume is None else proxy[:, :, index, volume])


# --------------------------------------------------------------------------------------------
# PNG / JPEG / BMP / TIFF
# --------------------------------------------------------------------------------------------


ALPHA_POLICIES = ("drop", "black")


@register_reader("raster", formats=("PNG", "JPEG", "BMP", "TIFF"))
class RasterReader(ImageReader):
    """Pillow reader for PNG / JPEG / BMP / TIFF giving ``(H, W)`` grey or ``(H, W, 3)`` RGB float32.

    Grey stays grey (8 / 16 / 32-bit), palette and RGBA / CMYK / YCbCr become RGB, LA becomes
    grey, 1-bit becomes 0 / 255. Transparency (RGBA, LA, a palette with a transparent entry):
    ``alpha="drop"`` (default) ignores it, ``alpha="black"`` composites the image on black
    (each pixel times its opacity). With ``max_size`` large JPEGs are decoded at a reduced DCT
    scale with Pillow's ``draft()`` (1/2, 1/4 or 1/8, never below ``max_size`` per side), which
    costs about a quarter of a full decode (perf notes: 5.2 ms vs 18.4 ms at 1024 px), then
    other formats are box-shrunk like :class:`DicomReader`.
    Metadata: ``spatial_shape``, ``original_channel_dim``, ``format``, ``mode``, ``shrink_factor``
    (approximate for JPEG draft), ``filename_or_obj``.

    Before decoding, the size on disk and the header's width x height x bands are checked against the
    read limits (``limits``, default :meth:`ReadLimits.from_env`): :class:`ResourceLimitError`;
    Pillow's ``DecompressionBombWarning`` is an error while reading. A truncated or corrupt JPEG, which
    Pillow's decoder fills with grey without a word, is refused with its reason
    (:func:`~toolkit.transforms.jpeg_check.jpeg_problem`).
    """

    def __init__(self, max_size: int | None = None, alpha: str = "drop", limits: ReadLimits | None = None):
        super().__init__()
        if alpha not in ALPHA_POLICIES:
            raise ValueError(f"alpha must be one of {ALPHA_POLICIES}, got {alpha!r}")
        self.max_size = max_size
        self.alpha = alpha
        self.limits = limits

    @classmethod
    def from_options(cls, options: ReaderOptions) -> RasterReader:
        return cls(max_size=options.max_size, alpha=options.alpha, limits=options.limits)

    def verify_suffix(self, filename: Sequence[PathLike] | PathLike) -> bool:
        return all(os.fspath(f).lower().endswith(RASTER_SUFFIXES) for f in ensure_tuple(filename))

    def read(self, data, **kwargs):
        names = tuple(os.fspath(f) for f in ensure_tuple(data))
        return names if len(names) > 1 else names[0]

    def get_data(self, img) -> tuple[np.ndarray, dict]:
        names = ensure_tuple(img)
        if len(names) != 1:
            raise ImageReadError(names[0], "RasterReader reads one file at a time")
        return self.load(names[0])

    def load(self, filename: PathLike) -> tuple[np.ndarray, dict]:
        """Decode one raster file; failures raise :class:`ImageReadError`."""
        from PIL import Image, UnidentifiedImageError

        filename = os.fspath(filename)
        limits = read_limits(self.limits)
        try:
            limits.check_file_size(filename, "raster")
            with pillow_guard(limits, own_check=True), Image.open(filename) as im:
                fmt, full_size = im.format, im.size
                # Image.open read the header only: check what it declares before decoding
                limits.check_image(filename, full_size[1], full_size[0], len(im.getbands()))
                if fmt == "JPEG":
                    with open(filename, "rb") as f:
                        problem = jpeg_problem(f.read())
                    if problem:
                        raise ImageReadError(filename, problem)
                if self.max_size and fmt == "JPEG":
                    # draft() keeps each side >= the requested size.
                    im.draft(im.mode if im.mode in ("L", "RGB") else None, (self.max_size, self.max_size))
                im.load()
                arr, mode = self._to_array(im, self.alpha)
        except ImageReadError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ResourceLimitError(filename, f"refused by Pillow: {first_line(exc)}") from exc
        except (
            UnidentifiedImageError,
            OSError,
            SyntaxError,
            ValueError,
        ) as exc:
            raise ImageReadError(
                filename, f"cannot read image: {type(exc).__name__}: {first_line(exc)}"
            ) from exc
        if arr.size == 0:
            raise ImageReadError(filename, "image is empty")
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise ImageReadError(filename, "image contains NaN or Inf values")
        k = shrink_factor(arr.shape[:2], self.max_size)
        colour = arr.ndim == 3
        out = box_shrink(arr, k, channel_last=colour)
        meta = {
            "spatial_shape": np.asarray(out.shape[:2]),
            "original_channel_dim": -1 if colour else "no_channel",
            "format": fmt,
            "mode": mode,
            "shrink_factor": round(full_size[0] / out.shape[1], 3),
            "filename_or_obj": filename,
        }
        return out, meta

    @staticmethod
    def _to_array(im, alpha: str = "drop") -> tuple[np.ndarray, str]:
        mode = im.mode
        if mode in ("L", "I", "F") or mode.startswith("I;16"):
            return np.asarray(im), mode
        if mode == "1":
            return np.asarray(im.convert("L")), mode
        grey = mode in ("LA", "La") or (
            mode in ("P", "PA") and im.palette is not None and im.palette.mode in ("L", "LA")
        )
        transparent = mode in ("RGBA", "RGBa", "LA", "La", "PA") or (
            mode == "P" and "transparency" in im.info
        )
        if alpha == "black" and transparent:
            rgba = np.asarray(im.convert("LA" if grey else "RGBA"), dtype=np.float32)
            opacity = rgba[..., -1:] / 255.0
            out = rgba[..., :-1] * opacity
            return (out[..., 0] if grey else out), mode
        if grey:
            return np.asarray(im.getchannel("L") if mode == "LA" else im.convert("L")), mode
        return np.asarray(im.convert("RGB")), mode


# --------------------------------------------------------------------------------------------
# Dispatch by content
# --------------------------------------------------------------------------------------------


class MedicalImageReader(ImageReader):
    """Choose the reader per file from the registered ones (:func:`register_reader`): PNG / JPEG / ...
    -> :class:`RasterReader`, NIfTI -> :class:`NiftiReader` (both by extension), DICOM (by content,
    also without extension / ACR-NEMA) -> :class:`DicomReader`, and any reader registered since.

    ``LoadImaged(keys, reader=MedicalImageReader(...))`` so one datalist may mix formats.
    ``nifti_slice`` (None: whole volumes) / ``nifti_volume``: NIfTI files give only that slice (see
    :class:`NiftiReader`); ``limits``: the read limits of every reader (default: from the environment).
    The arguments are :class:`ReaderOptions`; each reader takes what applies to it.
    """

    def __init__(
        self,
        dicom_frame: int | str = "reject",
        max_size: int | None = None,
        apply_voi: bool = False,
        alpha: str = "drop",
        nifti_slice: int | str | None = None,
        nifti_volume: int | None = None,
        limits: ReadLimits | None = None,
    ):
        super().__init__()
        options = ReaderOptions(dicom_frame, max_size, apply_voi, alpha, nifti_slice, nifti_volume, limits)
        self.readers = [_build_reader(cls, options) for cls in registered_readers().values()]
        self.formats = [f for r in _READERS for f in r.formats]

    def verify_suffix(self, filename: Sequence[PathLike] | PathLike) -> bool:
        return all(self._claiming(f) is not None for f in ensure_tuple(filename))

    def read(self, data, **kwargs):
        names = tuple(os.fspath(f) for f in ensure_tuple(data))
        return names if len(names) > 1 else names[0]

    def _claiming(self, name: PathLike) -> ImageReader | None:
        return next((reader for reader in self.readers if reader.verify_suffix(name)), None)

    def reader_for(self, filename: PathLike) -> ImageReader:
        """The first reader, in registry order, whose ``verify_suffix`` claims ``filename``."""
        name = os.fspath(filename)
        if not os.path.isfile(name):
            raise ImageReadError(name, "file not found")
        reader = self._claiming(name)
        if reader is None:
            known = (
                ", ".join(self.formats[:-1]) + f" or {self.formats[-1]}"
                if len(self.formats) > 1
                else self.formats[0]
            )
            raise ImageReadError(name, f"unknown image format (not {known})")
        return reader

    def get_data(self, img) -> tuple[np.ndarray, dict]:
        names = ensure_tuple(img)
        reader = self.reader_for(names[0])
        return reader.get_data(reader.read(names))
