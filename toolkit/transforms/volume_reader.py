"""Reading 3D volumes for 3D models: NIfTI (nibabel), MHA / MHD / NRRD files and DICOM series (ITK).

:class:`VolumeReader` is the ``LoadImage(d)`` reader of the 3D chain (a 3D bundle's
``loading`` list, ``loading#volume_3d`` in ``configs/base/components.json``). It gives MONAI's channel-last ``(x, y, z)``
arrays with a RAS ``affine`` and ``spacing`` in the metadata, so ``Orientation`` and ``Spacing``
put every volume on one grid whatever its header's voxel order.

* NIfTI goes through :class:`~toolkit.transforms.readers.NiftiReader` (nibabel; MONAI's
  ``ITKReader`` gives the same geometry but its first use costs ~5 s of ITK start-up).
* MHA / MHD / NRRD go through MONAI's ``ITKReader`` (``itk.imread``).
* A DICOM series (a folder holding one series, or a list of its instance files in any order) is
  sorted here by position along the slice normal and read as one volume with ITK's series reader
  (GDCM: every transfer syntax GDCM decodes, Rescale Slope / Intercept applied, so CT is in HU).
  ITK assumes evenly spaced slices (spacing = distance first-last / (n - 1)); uneven gaps (missing
  slices) are logged and recorded as ``meta["slice_gaps_uniform"] = False``, not refused.

Refused with an :class:`~toolkit.transforms.readers.ImageReadError` naming the file: a single 2D
DICOM image or a multi-frame instance (a 3D model needs a series of slices), instances of several
series or of different sizes in one input, 2D raster files, unreadable files. 4D NIfTI volumes are
read (``n_volumes`` in the metadata); the chain then picks one volume or refuses.
Before any voxel is read, the size on disk and what the headers declare (a NIfTI / MHA / NRRD header's
dimensions, a series' rows x columns x instances) are checked against the read limits
(:class:`~toolkit.transforms.limits.ReadLimits`): :class:`~toolkit.transforms.errors.ResourceLimitError`.
The metadata keep no DICOM patient attributes (only modality and the study / series UIDs).
"""

from __future__ import annotations

import logging
import os
import re
import zlib
from collections.abc import Sequence

import numpy as np
from monai.data import ImageReader
from monai.utils import ensure_tuple

from toolkit.data.files import NIFTI_SUFFIXES, RASTER_SUFFIXES, VOLUME_SUFFIXES, is_dicom_file
from toolkit.transforms.dicom_io import read_dicom
from toolkit.transforms.limits import ReadLimits, read_limits
from toolkit.transforms.readers import DicomReadError, ImageReadError, NiftiReader, PathLike, first_line

__all__ = ["VolumeReader", "sort_series_files"]

logger = logging.getLogger(__name__)
_DICOM_TAG_KEY = re.compile(r"^[0-9a-fA-F]{4}\|[0-9a-fA-F]{4}$")
_UNEVEN_GAP = 0.01  # relative deviation of slice gaps above which a series is reported as unevenly spaced


def sort_series_files(files: Sequence[PathLike], limits: ReadLimits | None = None) -> tuple[list[str], dict]:
    """The instance files of one DICOM series in slice order, and what their headers say.

    Order: position along the slice normal (ImagePositionPatient . normal of
    ImageOrientationPatient), else InstanceNumber. Returns ``(files, info)`` with ``info``:
    ``modality``, ``series_instance_uid``, ``study_instance_uid``, ``frames`` (of the first file),
    ``slice_gaps_uniform`` (None when positions are unknown). Raises :class:`DicomReadError` for an
    unreadable header, files of several series or two slices at one position, and a volume larger
    than the read limits allow (headers read within them: :func:`~toolkit.transforms.dicom_io.read_dicom`).
    """
    from pydicom.errors import InvalidDicomError

    from toolkit.transforms.errors import DicomLimitError

    limits = read_limits(limits)
    entries = []
    for name in (os.fspath(f) for f in files):
        try:
            ds = read_dicom(name, limits=limits)  # header only
        except DicomReadError:
            raise
        except (InvalidDicomError, EOFError, OSError, ValueError, TypeError, KeyError, zlib.error) as exc:
            raise DicomReadError(name, f"unreadable DICOM header: {first_line(exc)}") from exc
        entries.append((name, ds))
    first = entries[0][1]
    try:
        rows, columns = int(first.get("Rows", 0) or 0), int(first.get("Columns", 0) or 0)
        samples = int(first.get("SamplesPerPixel", 1) or 1)
    except (TypeError, ValueError):
        rows = columns = samples = 0  # invalid values: ITK says why
    shape = [rows, columns, len(entries)] + ([samples] if samples > 1 else [])
    limits.check_volume(entries[0][0], shape, source="series", error=DicomLimitError)
    series = {str(ds.get("SeriesInstanceUID", "")) for _, ds in entries}
    if len(series) > 1:
        raise DicomReadError(
            entries[0][0],
            f"the files given as one volume belong to {len(series)} DICOM series; give one series",
        )
    positions = [_position_along_normal(ds) for _, ds in entries]
    if all(p is not None for p in positions):
        order = sorted(range(len(entries)), key=lambda i: positions[i])
        ordered = [positions[i] for i in order]
        gaps = np.diff(ordered)
        if len(gaps) and np.min(gaps) <= 1e-6 * max(1.0, float(np.max(np.abs(ordered)))):
            raise DicomReadError(entries[0][0], "two instances of the series lie at the same slice position")
        uniform = bool(len(gaps) < 2 or np.ptp(gaps) <= _UNEVEN_GAP * float(np.mean(gaps)))
    else:
        numbers = [ds.get("InstanceNumber") for _, ds in entries]
        key = [(0, float(n)) if n not in (None, "") else (1, 0.0) for n in numbers]
        order = sorted(range(len(entries)), key=lambda i: (key[i], entries[i][0]))
        uniform = None
    info = {
        "modality": str(first.get("Modality", "") or ""),
        "series_instance_uid": str(first.get("SeriesInstanceUID", "") or ""),
        "study_instance_uid": str(first.get("StudyInstanceUID", "") or ""),
        "frames": _frames(first),
        "slice_gaps_uniform": uniform,
    }
    return [entries[i][0] for i in order], info


def _frames(ds) -> int:
    try:
        return int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        return 1


def _position_along_normal(ds) -> float | None:
    try:
        pos = [float(v) for v in ds.get("ImagePositionPatient", [])]
        ori = [float(v) for v in ds.get("ImageOrientationPatient", [])]
    except (TypeError, ValueError):
        return None
    if len(pos) != 3 or len(ori) != 6:
        return None
    normal = np.cross(ori[:3], ori[3:])
    return float(np.dot(pos, normal))


class VolumeReader(ImageReader):
    """Reader for ``LoadImage(d)`` in 3D chains; see the module docstring.

    Args:
        min_slices: fewest instances a DICOM series needs to be read as a volume (default 2).
        limits: the read limits (default: :meth:`ReadLimits.from_env` at each read).
    """

    def __init__(self, min_slices: int = 2, limits: ReadLimits | None = None):
        super().__init__()
        self.min_slices = max(2, int(min_slices))
        self.limits = limits
        self.nifti = NiftiReader(limits=limits)
        self._itk_reader = None  # MONAI's ITKReader, made on first use (ITK's start-up costs seconds)

    # -- ImageReader API ------------------------------------------------------------------------
    def verify_suffix(self, filename: Sequence[PathLike] | PathLike) -> bool:
        return True  # every input is routed (or refused with a reason) in get_data

    def read(self, data: Sequence[PathLike] | PathLike, **kwargs):
        """Record the input; reading happens in :meth:`get_data` (whose errors MONAI passes on unchanged)."""
        names = tuple(os.fspath(f) for f in ensure_tuple(data))
        return names if len(names) > 1 else names[0]

    def get_data(self, img) -> tuple[np.ndarray, dict]:
        names = ensure_tuple(img)
        if len(names) > 1:
            return self.read_series(names)
        name = os.fspath(names[0])
        if os.path.isdir(name):
            return self.read_series_folder(name)
        if not os.path.isfile(name):
            raise ImageReadError(name, "file not found")
        lower = name.lower()
        if lower.endswith(NIFTI_SUFFIXES):
            return self.nifti.get_data(self.nifti.read(name))
        if lower.endswith(VOLUME_SUFFIXES):
            return self._read_itk(name, name)
        if lower.endswith(RASTER_SUFFIXES):
            raise ImageReadError(
                name, "a 2D image (PNG / JPEG / ...): a 3D model needs a volume or a DICOM series"
            )
        if is_dicom_file(name):
            return self.read_series([name])
        raise ImageReadError(name, "unknown volume format (not NIfTI, MHA, MHD, NRRD or a DICOM series)")

    # -- DICOM series -----------------------------------------------------------------------------
    def read_series_folder(self, folder: str) -> tuple[np.ndarray, dict]:
        """The one DICOM series in ``folder`` (its files, not sub-folders) as a volume."""
        files = sorted(
            os.path.join(folder, f)
            for f in os.listdir(folder)
            if not f.startswith(".") and os.path.isfile(os.path.join(folder, f))
        )
        dicom = [f for f in files if is_dicom_file(f)]
        if not dicom:
            raise ImageReadError(folder, "folder holds no DICOM files")
        return self.read_series(dicom)

    def read_series(self, files: Sequence[PathLike]) -> tuple[np.ndarray, dict]:
        """The instance files of one DICOM series (any order) as one volume."""
        ordered, info = sort_series_files(files, self.limits)
        first = ordered[0]
        if len(ordered) < self.min_slices:
            if info["frames"] > 1:
                reason = (
                    f"a multi-frame DICOM instance ({info['frames']} frames): reading one as a volume is "
                    "not supported; a 3D model needs a series of single-frame slices"
                )
            else:
                reason = (
                    f"a single 2D DICOM image (modality {info['modality'] or 'unknown'}): a 3D model needs "
                    f"a series of at least {self.min_slices} slices or a volume file"
                )
            raise DicomReadError(first, reason)
        arr, meta = self._read_itk(ordered, first)
        if info["slice_gaps_uniform"] is False:
            logger.warning(
                "%s: the %d slices of series %s are unevenly spaced (missing slices?); read as evenly "
                "spaced between the first and last slice",
                os.path.dirname(first) or first,
                len(ordered),
                info["series_instance_uid"],
            )
        meta.update(info, n_slices=len(ordered))
        return arr, meta

    # -- ITK ----------------------------------------------------------------------------------------
    def _itk(self):
        if self._itk_reader is None:
            import itk
            from monai.data import ITKReader

            # ITK prints warnings (e.g. uneven slice gaps) straight to stderr; this reader reports them itself
            itk.ProcessObject.SetGlobalWarningDisplay(False)
            self._itk_reader = ITKReader()
        return self._itk_reader

    def _check_itk_header(self, name: str) -> None:
        """The volume an MHA / MHD / NRRD header declares, against the read limits (no voxel read)."""
        import itk

        limits = read_limits(self.limits)
        limits.check_file_size(name, "volume")
        try:
            io = itk.ImageIOFactory.CreateImageIO(name, itk.CommonEnums.IOFileMode_ReadMode)
            if io is None:
                return  # no ITK reader for it: imread says why
            io.SetFileName(name)
            io.ReadImageInformation()
            shape = [int(io.GetDimensions(i)) for i in range(io.GetNumberOfDimensions())]
            components = int(io.GetNumberOfComponents())
        except (RuntimeError, ValueError, TypeError, OSError) as exc:
            raise ImageReadError(name, f"cannot read the volume header: {first_line(exc)}") from exc
        limits.check_volume(name, shape + ([components] if components > 1 else []))

    def _read_itk(self, source: str | Sequence[str], name: str) -> tuple[np.ndarray, dict]:
        """``itk.imread`` of a file or of a sorted list of series files, through MONAI's metadata."""
        import itk

        reader = self._itk()
        if isinstance(source, str):  # MHA / MHD / NRRD: size on disk and header dimensions first
            self._check_itk_header(source)
        try:
            image = itk.imread(list(source) if not isinstance(source, str) else source)
            arr, meta = reader.get_data(image)
        except (RuntimeError, ValueError, TypeError, OSError) as exc:  # ITK raises RuntimeError for bad files
            raise ImageReadError(name, f"cannot read the volume: {first_line(exc)}") from exc
        meta = {
            k: v
            for k, v in meta.items()
            if not _DICOM_TAG_KEY.match(str(k)) and not str(k).startswith("ITK_")
        }
        if arr.ndim not in (3, 4):
            raise ImageReadError(name, f"not a 3D volume: shape {arr.shape}")
        if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
            raise ImageReadError(name, f"{int((~np.isfinite(arr)).sum())} voxels are NaN or Inf")
        if arr.ndim == 4:  # vector voxels (channel last) or a 4D image: the chain decides
            meta["n_volumes"] = int(arr.shape[-1])
        meta["filename_or_obj"] = name
        return arr.astype(np.float32, copy=False), meta
