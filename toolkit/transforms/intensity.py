"""Named intensity-normalisation presets, each a list of MONAI dictionary transforms."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from monai.config import KeysCollection
from monai.transforms import (
    NormalizeIntensityd,
    ScaleIntensityd,
    ScaleIntensityRanged,
    ScaleIntensityRangePercentilesd,
)

__all__ = ["INTENSITY_PRESETS", "intensity_transforms", "intensity_stages", "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _minmax(keys: KeysCollection) -> list:
    """Scale each image to [0, 1] by its own min and max."""
    return [ScaleIntensityd(keys, minv=0.0, maxv=1.0)]


def _percentile(
    keys: KeysCollection, lower: float = 0.5, upper: float = 99.5, channel_wise: bool = False
) -> list:
    """Clip to the [lower, upper] percentiles of each image, then scale to [0, 1]."""
    return [
        ScaleIntensityRangePercentilesd(
            keys, lower=lower, upper=upper, b_min=0.0, b_max=1.0, clip=True, channel_wise=channel_wise
        )
    ]


def _ct_window(keys: KeysCollection, center: float = 40.0, width: float = 80.0) -> list:
    """CT window in Hounsfield units (default brain window 40 / 80) mapped to [0, 1], clipped.
    Needs HU input: DICOM through :class:`~toolkit.transforms.readers.DicomReader` (rescale applied)."""
    if width <= 0:
        raise ValueError(f"window width must be > 0, got {width}")
    return [
        ScaleIntensityRanged(
            keys, a_min=center - width / 2, a_max=center + width / 2, b_min=0.0, b_max=1.0, clip=True
        )
    ]


def _zscore(keys: KeysCollection, nonzero: bool = False, channel_wise: bool = True) -> list:
    """Zero mean, unit standard deviation per image (over nonzero voxels only if ``nonzero``)."""
    return [NormalizeIntensityd(keys, nonzero=nonzero, channel_wise=channel_wise)]


def _imagenet(
    keys: KeysCollection,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    channels: int = 3,
) -> list:
    """Min-max to [0, 1], then channel-wise ImageNet mean / std (for ImageNet-pretrained nets).
    With ``channels=1`` and no mean / std given, the averages of the RGB values are used."""
    if mean is None:
        mean = IMAGENET_MEAN if channels == 3 else (sum(IMAGENET_MEAN) / 3,) * channels
    if std is None:
        std = IMAGENET_STD if channels == 3 else (sum(IMAGENET_STD) / 3,) * channels
    if len(mean) != channels or len(std) != channels:
        raise ValueError(f"imagenet preset: mean / std need {channels} values, got {len(mean)} / {len(std)}")
    return [
        ScaleIntensityd(keys, minv=0.0, maxv=1.0),
        NormalizeIntensityd(keys, subtrahend=list(mean), divisor=list(std), channel_wise=True),
    ]


INTENSITY_PRESETS: dict[str, Callable[..., list]] = {
    "minmax": _minmax,
    "percentile": _percentile,
    "ct_window": _ct_window,
    "zscore": _zscore,
    "imagenet": _imagenet,
}


def intensity_transforms(name: str, keys: KeysCollection = "image", **kwargs) -> list:
    """MONAI transforms for the intensity preset ``name`` (one of :data:`INTENSITY_PRESETS`).

    Keyword arguments go to the preset: ``percentile`` (lower, upper, channel_wise), ``ct_window``
    (center, width), ``zscore`` (nonzero, channel_wise), ``imagenet`` (mean, std, channels).
    ``"none"`` returns an empty list.
    """
    if name == "none":
        return []
    if name not in INTENSITY_PRESETS:
        raise ValueError(
            f"unknown intensity preset {name!r}; choose from {sorted(INTENSITY_PRESETS)} or 'none'"
        )
    try:
        return INTENSITY_PRESETS[name](keys, **kwargs)
    except TypeError as exc:
        raise ValueError(f"intensity preset {name!r}: {exc}") from None


def intensity_stages(name: str, keys: KeysCollection = "image", **kwargs) -> tuple[list, list]:
    """The preset ``name`` split around training augmentation: ``(scaling, standardisation)``.

    Augmentation presets are written for images on the [0, 1] scale of the scaling step: black is
    0, so a rotated or shifted image is padded with black as at test time, and brightness / noise
    amounts mean what their docstrings say. ImageNet's mean / std therefore comes after them; run
    before, a pad of 0 would be the ImageNet mean (mid grey, a cue no test image has). Every other
    preset is all scaling (``zscore`` included: padding is then the image mean).
    """
    steps = intensity_transforms(name, keys=keys, **kwargs)
    if name == "imagenet":
        return steps[:-1], steps[-1:]
    return steps, []
