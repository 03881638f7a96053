"""What a 3D bundle's chain needs besides MONAI's transforms: one volume of a 4D image
(:class:`SelectVolumed`) and the checks of its ``image_size`` and ``spacing`` ids.

The chain itself is the bundle's ``loading`` list in its train.json (``loading#volume_3d`` in
``configs/base/components.json``): load (:class:`~toolkit.transforms.volume_reader.VolumeReader`) ->
channel first -> one volume -> channels -> ``Orientation`` to RAS -> ``Spacing`` to the voxel spacing
(when given) -> min-max -> resize (or pad / crop) to ``image_size``.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

from monai.config import KeysCollection
from monai.transforms import (
    MapTransform,
)

from toolkit.transforms.readers import ImageReadError

__all__ = ["FIT_MODES", "SelectVolumed", "volume_size", "voxel_spacing"]

FIT_MODES = ("resize", "pad_crop")


class SelectVolumed(MapTransform):
    """Keep one volume of a channel-first 4D image (fMRI / ASL time series: volumes on the channel axis).

    ``volume=None`` (default) refuses 4D input with an :class:`ImageReadError` naming the file and
    the number of volumes; an int picks that volume. 3D images (1 channel, or 3 colour channels of
    an RGB volume) pass unchanged. A 4D image is recognised by ``n_volumes`` in its metadata (set by
    the readers) or by a channel count other than 1 and 3.
    """

    def __init__(self, keys: KeysCollection, volume: int | None = None, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.volume = volume

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self._select(d[key])
        return d

    def _select(self, img):
        meta = getattr(img, "meta", {}) or {}
        name = str(meta.get("filename_or_obj", "")) or None
        if img.ndim != 4:
            raise ImageReadError(name, f"not a 3D volume: shape {tuple(img.shape[1:])} after channel-first")
        n = int(meta.get("n_volumes", 0) or 0)
        if not (n > 1 or img.shape[0] not in (1, 3)):
            return img
        n = n or img.shape[0]
        if self.volume is None:
            raise ImageReadError(
                name,
                f"a 4D image ({n} volumes, e.g. an fMRI / ASL time series): a 3D model takes one volume; "
                "choose it with the preprocessing option volume=<index>",
            )
        if not -n <= self.volume < n:
            raise ImageReadError(name, f"volume {self.volume} out of range for {n} volumes")
        index = self.volume % n
        return img[index : index + 1]


def volume_size(value: int | Sequence[int], what: str = "image_size") -> tuple[int, int, int]:
    """A 3D size from one int (a cube) or 3 ints."""
    values = (value,) * 3 if isinstance(value, (int, float)) else tuple(value)
    if len(values) != 3 or any(int(v) != v or v < 1 for v in values):
        raise ValueError(f"{what} must be one positive int (a cube) or 3 of them, got {value!r}")
    return tuple(int(v) for v in values)


def voxel_spacing(spacing: float | Sequence[float] | None) -> tuple[float, float, float] | None:
    """A voxel spacing in mm from one number or 3 (None: none)."""
    if spacing is None:
        return None
    pixdim = (float(spacing),) * 3 if isinstance(spacing, (int, float)) else tuple(map(float, spacing))
    if len(pixdim) != 3 or min(pixdim) <= 0:
        raise ValueError(f"spacing must be one positive number or 3 of them, got {spacing!r}")
    return pixdim
