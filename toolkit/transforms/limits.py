"""Limits on what one input file may declare, checked from its header before anything is decoded.

A few KB of compressed data can declare an image of 20,000 x 20,000 pixels, a volume of 10^9 voxels
or a DICOM data set that inflates to gigabytes; decoding such a file takes all the memory and time of a
run. Every reader checks the header (and the size on disk) against :class:`ReadLimits` first and
refuses with :class:`~toolkit.transforms.errors.ResourceLimitError` naming the file, what it declares,
the limit and the environment variable that raises it. The defaults fit every real image of the
shared data set with a margin of 10x or more (``docs/security.md``, "Limits on input files").

Raising a limit: set the environment variable before the run, e.g. ``CIT_MAX_PIXELS=200000000 cit
infer ...``. DataLoader workers inherit it; the limits are read when a file is read.
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, fields

from toolkit.transforms.errors import ResourceLimitError

__all__ = ["ReadLimits", "LIMIT_VARIABLES", "read_limits", "pillow_guard", "MiB"]

MiB = 1 << 20


@dataclass(frozen=True)
class ReadLimits:
    """What one input file may declare (defaults: see ``docs/security.md``).

    ``max_pixels``: samples of one 2D image or frame (rows x columns x samples per pixel);
    ``max_voxels``: samples of one file as a whole (all frames of a DICOM object, a NIfTI / MHA /
    NRRD volume with its 4th dimension and colour channels, a DICOM series read as one volume);
    ``max_frames``: NumberOfFrames of one DICOM object; ``max_*_bytes``: size on disk of one DICOM
    file (also what a deflated DICOM file may inflate to), one volume file (NIfTI, MHA, NRRD) and one
    raster file (PNG, JPEG, BMP, TIFF); ``max_ratio``: how many bytes of image a byte of compressed DICOM
    pixel data may declare (checked for images declaring more than 16 MiB).
    """

    max_pixels: int = 1 << 26  # 67,108,864: 8192 x 8192 grey, ~4730 x 4730 RGB
    max_voxels: int = 1 << 28  # 268,435,456: 1 GiB as float32, e.g. 512 x 512 x 1024
    max_frames: int = 10_000
    max_dicom_bytes: int = 64 * MiB
    max_volume_bytes: int = 1024 * MiB
    max_raster_bytes: int = 128 * MiB
    max_ratio: int = 1000  # compressed DICOM pixel data: declared bytes per byte held (images over 16 MiB)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ReadLimits:
        """The defaults, with every limit whose variable (``LIMIT_VARIABLES``) is set replaced by it."""
        environ = os.environ if environ is None else environ
        values = {}
        for f in fields(cls):
            variable, unit = LIMIT_VARIABLES[f.name]
            raw = environ.get(variable, "").strip()
            if not raw:
                continue
            try:
                number = float(raw.replace("_", ""))
            except ValueError:
                number = float("nan")
            if not (math.isfinite(number) and number > 0):
                raise ValueError(f"{variable} must be a positive number, got {raw!r}")
            values[f.name] = int(number * unit)
        return cls(**values)

    # -- checks (each raises ResourceLimitError naming the file) ---------------------------------------
    def check_file_size(
        self,
        filename,
        kind: str,
        size: int | None = None,
        error: type[ResourceLimitError] = ResourceLimitError,
    ) -> None:
        """``kind``: dicom | volume (NIfTI / MHA / NRRD) | raster."""
        field = {"dicom": "max_dicom_bytes", "nifti": "max_volume_bytes", "volume": "max_volume_bytes"}
        name = field.get(kind, "max_raster_bytes")
        size = os.stat(filename).st_size if size is None else int(size)
        limit = getattr(self, name)
        if size > limit:
            what = {"max_dicom_bytes": "DICOM", "max_volume_bytes": "volume"}.get(name, "image")
            raise error(
                filename,
                f"the file is {_mib(size)} on disk, over the limit of {_mib(limit)} for a {what} file"
                f"{_hint(name, size)}",
            )

    def check_image(
        self,
        filename,
        rows: int,
        columns: int,
        samples: int = 1,
        frames: int = 1,
        source: str = "header",
        error: type[ResourceLimitError] = ResourceLimitError,
    ) -> None:
        """A 2D image (or ``frames`` frames of one) as its ``source`` declares it."""
        rows, columns, samples, frames = int(rows), int(columns), int(samples or 1), int(frames or 1)
        if frames > self.max_frames:
            raise error(
                filename,
                f"the {source} declares {frames:,} frames, over the limit of {self.max_frames:,}"
                f"{_hint('max_frames', frames)}",
            )
        per_frame = rows * columns * samples
        what = f"{rows:,} x {columns:,} pixels" + (f" x {samples} samples" if samples > 1 else "")
        if per_frame > self.max_pixels:
            raise error(
                filename,
                f"the {source} declares an image of {what} = {per_frame:,} samples, over the limit of "
                f"{self.max_pixels:,}{_hint('max_pixels', per_frame)}",
            )
        if per_frame * frames > self.max_voxels:
            raise error(
                filename,
                f"the {source} declares {frames:,} frames of {what} = {per_frame * frames:,} samples, over "
                f"the limit of {self.max_voxels:,}{_hint('max_voxels', per_frame * frames)}",
            )

    def check_volume(
        self,
        filename,
        shape: Sequence[int],
        source: str = "header",
        error: type[ResourceLimitError] = ResourceLimitError,
    ) -> None:
        """A volume (any number of dimensions, channels and volumes included) as its header declares it."""
        shape = [int(s) for s in shape]
        total = math.prod(shape) if shape else 0
        if total > self.max_voxels:
            raise error(
                filename,
                f"the {source} declares a volume of {' x '.join(f'{s:,}' for s in shape)} = {total:,} "
                f"voxels, over the limit of {self.max_voxels:,}{_hint('max_voxels', total)}",
            )


# field -> (environment variable, unit of its value)
LIMIT_VARIABLES: dict[str, tuple[str, int]] = {
    "max_pixels": ("CIT_MAX_PIXELS", 1),
    "max_voxels": ("CIT_MAX_VOXELS", 1),
    "max_frames": ("CIT_MAX_FRAMES", 1),
    "max_dicom_bytes": ("CIT_MAX_DICOM_MB", MiB),
    "max_volume_bytes": ("CIT_MAX_VOLUME_MB", MiB),
    "max_raster_bytes": ("CIT_MAX_RASTER_MB", MiB),
    "max_ratio": ("CIT_MAX_COMPRESSION_RATIO", 1),
}


def read_limits(limits: ReadLimits | None = None) -> ReadLimits:
    """``limits`` when given, else the limits of the environment (read now, so workers see the same)."""
    return limits if limits is not None else ReadLimits.from_env()


def _mib(n: int) -> str:
    return f"{n / MiB:,.1f} MiB" if n < 10 * MiB else f"{n / MiB:,.0f} MiB"


def _hint(name: str, needed: int) -> str:
    variable, unit = LIMIT_VARIABLES[name]
    value = math.ceil(needed / unit)
    return f" (to read it, raise the limit: {variable}={value} or more)"


@contextlib.contextmanager
def pillow_guard(limits: ReadLimits, own_check: bool = False) -> Iterator[None]:
    """While reading with Pillow: its ``DecompressionBombWarning`` an error (a run silencing warnings must
    not hide it), and its decompression-bomb threshold at our pixel limit; with ``own_check`` the caller
    checks ``Image.open``'s header against the limits itself before ``load()`` (its refusal names the
    declared size), so Pillow's threshold is lifted meanwhile."""
    from PIL import Image

    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None if own_check else limits.max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved
