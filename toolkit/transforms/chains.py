"""Ready-made transform chains for classification: 2D here, 3D in :mod:`toolkit.transforms.volumes`."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from monai.transforms import Compose, EnsureChannelFirstd, EnsureTyped, LoadImaged, Resized

from toolkit.transforms.augmentation import augmentation_steps
from toolkit.transforms.intensity import intensity_stages
from toolkit.transforms.readers import ALPHA_POLICIES, MedicalImageReader
from toolkit.transforms.utility import AsChannelsd, LabelToTensord, SelectSliced, colour_policy
from toolkit.transforms.volumes import volume_transforms

__all__ = ["classification_transforms", "describe_colour_policy", "state_colour_policy"]

logger = logging.getLogger(__name__)
_LOGGED: set[tuple] = set()  # colour policies already stated in this process (once per run)


def describe_colour_policy(colour: str, alpha: str, channels: int) -> str:
    """One sentence saying what the chain does with grey, colour and transparent images."""
    colour = colour_policy(colour)
    if colour == "grey":
        text = f"colour images are converted to luminance (BT.601), then every image is repeated to {channels} channel(s)"
    elif channels == 1:
        text = "grey stays grey, colour images are converted to luminance (BT.601) for the 1-channel network"
    else:
        text = f"colour is kept (RGB), grey images are repeated to {channels} channels"
    transparent = (
        "alpha is dropped" if alpha == "drop" else "images are composited on black (pixel x opacity)"
    )
    return f"colour policy {colour!r}: {text}; RGBA / LA / transparent palette: {transparent}"


def state_colour_policy(colour: str, alpha: str, channels: int) -> None:
    """Log (INFO) :func:`describe_colour_policy`, once per run for each policy."""
    if (colour, alpha, channels) not in _LOGGED:
        _LOGGED.add((colour, alpha, channels))
        logger.info(describe_colour_policy(colour, alpha, channels))


def classification_transforms(
    stage: str = "train",
    image_size: int = 224,
    channels: int = 3,
    intensity: str = "minmax",
    intensity_kwargs: dict | None = None,
    augmentation: Sequence | Compose | None = None,
    keys: str = "image",
    label_key: str | None = "label",
    spatial_dims: int = 2,
    dicom_frame: int | str = "reject",
    nifti_slice: int | str = "middle",
    reader_max_size: int | None = None,
    nifti_volume: int | None = None,
    resize_mode: str | None = None,
    colour: str = "rgb",
    alpha: str = "drop",
    **volume_options,
) -> Compose:
    """Transforms for 2D image classification over a datalist entry ``{"image": path, "label": ...}``.

    ``spatial_dims=3`` returns the 3D chain instead:
    :func:`~toolkit.transforms.volumes.volume_transforms` with ``image_size``, ``channels``,
    ``colour``, the intensity options, ``augmentation``, ``nifti_volume`` (as ``volume``) and
    ``volume_options`` (``spacing``, ``axcodes``, ``fit``); the 2D reader,
    slice and alpha options do not apply there. This is how a model description recording
    ``spatial_dims: 3`` rebuilds its chain.

    Steps: load (reader chosen per file by content: :class:`~toolkit.transforms.readers.DicomReader`
    for DICOM with or without extension, :class:`~toolkit.transforms.readers.NiftiReader` for NIfTI,
    :class:`~toolkit.transforms.readers.RasterReader` for PNG / JPEG / ...) -> channel first ->
    middle (or ``nifti_slice``) slice of 3D volumes -> ``channels`` channels under the colour
    policy -> resize to ``image_size`` x ``image_size`` -> intensity preset -> float32 tensors.
    ``augmentation`` (training only): the bundle's list of random transforms (or a ``Compose``; its
    ``"augmentation"`` list in ``configs/train.json``), run inside the intensity preset, after its
    scaling and before the ImageNet mean / std
    (:func:`~toolkit.transforms.intensity.intensity_stages`), so padding is black and amounts are
    on the [0, 1] scale; ignored for ``stage="eval"``.

    Colour policy (stated in the log once per run): ``colour="rgb"`` (default) keeps colour and
    repeats grey to ``channels`` (a colour image for ``channels=1`` becomes its luminance);
    ``colour="grey"`` converts colour images to luminance, then repeats them to ``channels``, so
    a set mixing grey and colour files (e.g. grey scans saved as RGB by some tool) gives the
    network one kind of input. ``alpha="drop"`` (default) ignores transparency (RGBA, LA,
    transparent palette); ``alpha="black"`` composites those images on black.

    Resizing is a plain resize to a square, ignoring the aspect ratio, as in the studies the
    bundles reproduce. ``resize_mode="area"`` (the 2D default; 3D: ``"trilinear"``) averages pixels
    when shrinking (anti-aliased) but equals nearest neighbour when enlarging; pass ``"bilinear"``
    for tiny inputs.
    ``reader_max_size`` lets the readers shrink large images by an integer factor right after
    decoding (both sides stay >= it; set it to ``image_size``): much faster for 2048 px
    radiographs, with a slightly different (still area-averaged) result.

    Every deterministic step comes before the first random one, so ``CacheDataset`` caches the
    expensive part. The label (class index or multi-hot list) becomes an int64 scalar / float32
    vector tensor. Images come out as plain tensors (no ``MetaTensor`` metadata), so one batch may
    mix formats and colour modes.
    """
    if stage not in ("train", "eval"):
        raise ValueError(f"stage must be 'train' or 'eval', got {stage!r}")
    if spatial_dims == 3:
        return volume_transforms(
            stage,
            image_size,
            channels,
            intensity,
            intensity_kwargs,
            augmentation,
            keys,
            label_key,
            volume=nifti_volume,
            colour=colour,
            resize_mode=resize_mode or "trilinear",
            **volume_options,
        )
    if spatial_dims != 2:
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
    if volume_options:
        raise TypeError(f"options {sorted(volume_options)} apply to 3D chains only (spatial_dims=3)")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    colour = colour_policy(colour)
    if alpha not in ALPHA_POLICIES:
        raise ValueError(f"alpha must be one of {ALPHA_POLICIES}, got {alpha!r}")
    state_colour_policy(colour, alpha, channels)
    intensity_kwargs = dict(intensity_kwargs or {})
    if intensity == "imagenet":
        intensity_kwargs.setdefault("channels", channels)

    # NIfTI: the reader reads only the slice SelectSliced would take (a 2D model never holds the volume)
    reader = MedicalImageReader(
        dicom_frame=dicom_frame,
        max_size=reader_max_size,
        alpha=alpha,
        nifti_slice=nifti_slice,
        nifti_volume=nifti_volume,
    )
    steps = [
        LoadImaged(keys, reader=reader, image_only=True),
        EnsureChannelFirstd(keys),
        SelectSliced(keys, axis=-1, index=nifti_slice, volume=nifti_volume),
        AsChannelsd(keys, channels=channels, colour=colour),
        Resized(keys, spatial_size=(image_size, image_size), mode=resize_mode or "area"),
    ]
    scaling, standardisation = intensity_stages(intensity, keys=keys, **intensity_kwargs)
    steps += scaling
    if stage == "train":
        steps += augmentation_steps(augmentation)
    steps += standardisation
    # Plain tensors out: images of one batch may come from different formats / colour modes whose
    # metadata do not collate; engines find the source record through the item's ``index``.
    steps.append(EnsureTyped(keys, data_type="tensor", dtype="float32", track_meta=False))
    if label_key:
        steps.append(LabelToTensord(label_key, allow_missing_keys=True))
    return Compose(steps)
