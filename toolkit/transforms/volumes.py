"""The 3D chain: volumes (NIfTI, MHA / NRRD, DICOM series) to network-ready ``(C, D, H, W)`` tensors.

:func:`volume_transforms` is what :func:`~toolkit.transforms.chains.classification_transforms`
builds for ``spatial_dims=3``: load (:class:`~toolkit.transforms.volume_reader.VolumeReader`) ->
channel first -> one volume of a 4D image -> channels -> ``Orientation`` to RAS -> ``Spacing`` to
the model's voxel spacing (when it has one) -> intensity preset -> resize (or pad / crop) to
``image_size`` -> (train only) the bundle's 3D augmentation transforms -> float32 tensors.
Deterministic steps come first, so ``CacheDataset`` caches them once.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

from monai.config import KeysCollection
from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    EnsureTyped,
    LoadImaged,
    MapTransform,
    Orientationd,
    Resized,
    ResizeWithPadOrCropd,
    Spacingd,
)

from toolkit.transforms.augmentation import augmentation_steps
from toolkit.transforms.intensity import intensity_transforms
from toolkit.transforms.readers import ImageReadError
from toolkit.transforms.utility import AsChannelsd, LabelToTensord
from toolkit.transforms.volume_reader import VolumeReader

__all__ = ["FIT_MODES", "SelectVolumed", "volume_size", "volume_transforms", "voxel_spacing"]

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


def volume_transforms(
    stage: str = "train",
    image_size: int | Sequence[int] = 64,
    channels: int = 1,
    intensity: str = "minmax",
    intensity_kwargs: dict | None = None,
    augmentation: Sequence | Compose | None = None,
    keys: str = "image",
    label_key: str | None = "label",
    spacing: float | Sequence[float] | None = None,
    axcodes: str = "RAS",
    fit: str = "resize",
    resize_mode: str = "trilinear",
    volume: int | None = None,
    colour: str = "grey",
) -> Compose:
    """Transforms for 3D classification over a datalist entry ``{"image": volume, "label": ...}``.

    ``image`` is a NIfTI / MHA / MHD / NRRD file, a folder holding one DICOM series or a list of
    a series' instance files (see :class:`~toolkit.transforms.volume_reader.VolumeReader`).

    Args:
        image_size: network input, one int (a cube) or 3 ints, in RAS axis order.
        channels: network input channels; RGB volumes become luminance for 1 channel (``colour``).
        spacing: voxel spacing in mm (one number or 3) to resample to after reorienting; None (for
            data without a physical spacing, e.g. MedMNIST) resamples nothing: ``fit`` alone decides the size.
        axcodes: the voxel order every volume is turned to (MONAI ``Orientation``), RAS by default.
        fit: ``"resize"`` stretches the volume to ``image_size`` (``resize_mode`` interpolation,
            anti-aliased when shrinking); ``"pad_crop"`` keeps the voxel size and pads / crops
            symmetrically (use it with ``spacing`` to keep physical scale).
        intensity: preset of :func:`~toolkit.transforms.intensity.intensity_transforms` (``minmax``,
            ``ct_window`` for CT series in HU, ``zscore``, ``percentile``); applied before padding, so
            padding is the preset's 0.
        augmentation: the bundle's random 3D transforms (a list or a ``Compose``; its ``"augmentation"``
            list in ``configs/train.json``), run after the resize on the preset's scale (train stage only).
        volume: for 4D images (time series), the volume to use; None refuses them.
    """
    if stage not in ("train", "eval"):
        raise ValueError(f"stage must be 'train' or 'eval', got {stage!r}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if fit not in FIT_MODES:
        raise ValueError(f"fit must be one of {FIT_MODES}, got {fit!r}")
    size = volume_size(image_size)
    steps = [
        LoadImaged(keys, reader=VolumeReader(), image_only=True),
        EnsureChannelFirstd(keys),
        SelectVolumed(keys, volume=volume),
        AsChannelsd(keys, channels=channels, colour=colour),
        Orientationd(keys, axcodes=axcodes, labels=None),  # labels from the RAS metadata of both readers
    ]
    if spacing is not None:
        steps.append(Spacingd(keys, pixdim=voxel_spacing(spacing), mode="bilinear"))
    steps += intensity_transforms(intensity, keys=keys, **(intensity_kwargs or {}))
    if fit == "resize":
        anti_aliasing = resize_mode not in ("nearest", "area")
        steps.append(Resized(keys, spatial_size=size, mode=resize_mode, anti_aliasing=anti_aliasing))
    else:
        steps.append(ResizeWithPadOrCropd(keys, spatial_size=size))
    if stage == "train":
        steps += augmentation_steps(augmentation)
    steps.append(EnsureTyped(keys, data_type="tensor", dtype="float32", track_meta=False))
    if label_key:
        steps.append(LabelToTensord(label_key, allow_missing_keys=True))
    return Compose(steps)
