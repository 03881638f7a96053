"""Model records written before bundles stated their chain, read as recorded chains.

Until bundles held their loading and normalisation as transforms in ``configs/train.json``, a
trained model's ``model_info.json`` recorded the arguments of the Python function that built its
evaluation chain (``image_size``, ``channels``, ``intensity`` and its ``intensity_kwargs``, the 2D
reader options or the 3D ``spacing`` / ``fit``), not the transforms. Those models stay valid:
:func:`legacy_chain` writes the chain those arguments stood for as the same JSON record a bundle's
train.json gives today (``toolkit.transforms.recorded``), so every model is rebuilt one way, through
the record and its allow-list. An untrained bundle's ``study_model`` (its inference.json) states the
same facts and is read the same way.

The arguments' defaults and the intensity names are those of the function the records came
from; this is the only place they live.
"""

from __future__ import annotations

from typing import Any

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from toolkit.transforms.volumes import FIT_MODES, volume_size, voxel_spacing

__all__ = ["LEGACY_INTENSITIES", "imagenet_statistics", "legacy_chain", "legacy_intensity"]

# each intensity name of the older records, with the arguments it took
_INTENSITY_ARGUMENTS = {
    "minmax": (),
    "percentile": ("lower", "upper", "channel_wise"),
    "ct_window": ("center", "width"),
    "zscore": ("nonzero", "channel_wise"),
    "imagenet": ("mean", "std", "channels"),
    "none": (),
}
LEGACY_INTENSITIES = tuple(_INTENSITY_ARGUMENTS)
_KEYS = "image"
_IMAGE_ONLY = ("reader_max_size", "dicom_frame", "nifti_slice", "alpha")


def _step(name: str, **kwargs: Any) -> dict:
    target = name if "." in name else f"monai.transforms.{name}"
    return {"_target_": target, "keys": _KEYS, **kwargs}


def legacy_chain(preprocessing: dict) -> list[dict]:
    """The recorded chain (``_target_`` steps, plain JSON) of an older record's ``preprocessing``.
    Raises ``ValueError`` naming the argument it cannot read."""
    options = {k: v for k, v in preprocessing.items() if v is not None}  # None: not given
    size = options.pop("image_size", 224)
    channels = options.pop("channels", 3)
    colour = options.pop("colour", "rgb")
    intensity = legacy_intensity(
        options.pop("intensity", "minmax"), options.pop("intensity_kwargs", None), channels
    )
    dims = options.pop("spatial_dims", 2)
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    if dims == 3:
        for option in _IMAGE_ONLY:  # the 2D reader's options, which a 3D chain never used
            options.pop(option, None)
        steps = _volume_loading(size, channels, colour, intensity, options)
    elif dims == 2:
        steps = _image_loading(size, channels, colour, options) + intensity
    else:
        raise ValueError(f"spatial_dims must be 2 or 3, got {dims!r}")
    if options:
        raise ValueError(f"unknown preprocessing arguments {sorted(options)} for a {dims}D model")
    return steps


def _image_loading(size: int, channels: int, colour: str, options: dict) -> list[dict]:
    """Read (the project's reader), channel first, a volume's slice, channels, a square resize."""
    slice_index = options.pop("nifti_slice", "middle")
    reader = {
        "_target_": "toolkit.transforms.MedicalImageReader",
        "max_size": options.pop("reader_max_size", None),
        "dicom_frame": options.pop("dicom_frame", "reject"),
        "alpha": options.pop("alpha", "drop"),
        "nifti_slice": slice_index,
    }
    select = _step("toolkit.transforms.SelectSliced", axis=-1, index=slice_index)
    if "nifti_volume" in options:  # one volume of a 4D NIfTI (written only when given)
        reader["nifti_volume"] = select["volume"] = options.pop("nifti_volume")
    return [
        _step("LoadImaged", image_only=True, reader=reader),
        _step("EnsureChannelFirstd"),
        select,
        _step("toolkit.transforms.AsChannelsd", channels=channels, colour=colour),
        _step("Resized", spatial_size=[size, size], mode=options.pop("resize_mode", None) or "area"),
    ]


def _volume_loading(size, channels: int, colour: str, intensity: list[dict], options: dict) -> list[dict]:
    """Read a volume, choose one of a 4D series, channels, reorient, resample, intensity, then fit."""
    fit, spacing = options.pop("fit", "resize"), options.pop("spacing", None)
    if fit not in FIT_MODES:
        raise ValueError(f"fit must be one of {FIT_MODES}, got {fit!r}")
    steps = [
        _step("LoadImaged", image_only=True, reader={"_target_": "toolkit.transforms.VolumeReader"}),
        _step("EnsureChannelFirstd"),
        _step("toolkit.transforms.SelectVolumed", volume=options.pop("nifti_volume", None)),
        _step("toolkit.transforms.AsChannelsd", channels=channels, colour=colour),
        _step("Orientationd", axcodes=options.pop("axcodes", "RAS"), labels=None),
    ]
    if spacing is not None:
        steps.append(_step("Spacingd", pixdim=list(voxel_spacing(spacing)), mode="bilinear"))
    steps += intensity
    shape, mode = list(volume_size(size)), options.pop("resize_mode", None) or "trilinear"
    if fit == "resize":
        steps.append(
            _step("Resized", spatial_size=shape, mode=mode, anti_aliasing=mode not in ("nearest", "area"))
        )
    else:
        steps.append(_step("ResizeWithPadOrCropd", spatial_size=shape))
    return steps


def legacy_intensity(name: str, kwargs: dict | None, channels: int) -> list[dict]:
    """The steps each intensity name stood for, with the defaults it had."""
    kwargs = dict(kwargs or {})
    if name not in _INTENSITY_ARGUMENTS:
        raise ValueError(f"unknown intensity {name!r}; records hold one of {list(LEGACY_INTENSITIES)}")
    if set(kwargs) - set(_INTENSITY_ARGUMENTS[name]):
        raise ValueError(f"intensity {name!r} takes {list(_INTENSITY_ARGUMENTS[name])}, got {sorted(kwargs)}")
    minmax = _step("ScaleIntensityd", minv=0.0, maxv=1.0)
    if name == "none":
        return []
    if name == "minmax":
        return [minmax]
    if name == "percentile":
        lower, upper = kwargs.get("lower", 0.5), kwargs.get("upper", 99.5)
        channel_wise = kwargs.get("channel_wise", False)
        return [
            _step(
                "ScaleIntensityRangePercentilesd",
                lower=lower,
                upper=upper,
                b_min=0.0,
                b_max=1.0,
                clip=True,
                channel_wise=channel_wise,
            )
        ]
    if name == "ct_window":
        center, width = kwargs.get("center", 40.0), kwargs.get("width", 80.0)
        if width <= 0:
            raise ValueError(f"ct_window width must be > 0, got {width}")
        return [
            _step(
                "ScaleIntensityRanged",
                a_min=center - width / 2,
                a_max=center + width / 2,
                b_min=0.0,
                b_max=1.0,
                clip=True,
            )
        ]
    if name == "zscore":
        return [
            _step(
                "NormalizeIntensityd",
                nonzero=kwargs.get("nonzero", False),
                channel_wise=kwargs.get("channel_wise", True),
            )
        ]
    mean, std = imagenet_statistics(kwargs, kwargs.get("channels", channels))
    return [minmax, _step("NormalizeIntensityd", subtrahend=mean, divisor=std, channel_wise=True)]


def imagenet_statistics(kwargs: dict | None, channels: int) -> tuple[list[float], list[float]]:
    """The mean / std of an ``imagenet`` intensity: as recorded, else ImageNet's per channel (for one
    channel the average of the three)."""
    kwargs = kwargs or {}
    mean = list(kwargs.get("mean") or _imagenet_default(IMAGENET_DEFAULT_MEAN, channels))
    std = list(kwargs.get("std") or _imagenet_default(IMAGENET_DEFAULT_STD, channels))
    if len(mean) != channels or len(std) != channels:
        raise ValueError(
            f"imagenet intensity: mean / std need {channels} values, got {len(mean)} / {len(std)}"
        )
    return mean, std


def _imagenet_default(values: tuple, channels: int) -> list[float]:
    return list(values) if channels == 3 else [sum(values) / 3] * channels
