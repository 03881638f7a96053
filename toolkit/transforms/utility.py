"""Small deterministic transforms the chains need and MONAI lacks: 2D slice / volume selection,
channel-count conversion under a colour policy (stated in the log once per run) and label-to-tensor
conversion. Array form + dictionary form, MONAI style.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform

from toolkit.transforms.readers import ImageReadError

__all__ = [
    "SelectSlice",
    "SelectSliced",
    "AsChannels",
    "AsChannelsd",
    "COLOUR_POLICIES",
    "colour_policy",
    "describe_colour_policy",
    "state_colour_policy",
    "LabelToTensord",
    "label_to_tensor",
    "invert_intensity",
]

logger = logging.getLogger(__name__)
_LOGGED: set[tuple] = set()  # colour policies already stated in this process (once per run)
LUMINANCE = (0.299, 0.587, 0.114)  # ITU-R BT.601, as Pillow's convert("L")


def _filename(img: Any) -> str | None:
    meta = getattr(img, "meta", None) or {}
    name = meta.get("filename_or_obj")
    return str(name) if name else None


class SelectSlice(Transform):
    """Take one 2D slice from a channel-first 3D image ``(C, X, Y, Z)`` -> ``(C, X, Y)``.

    Args:
        axis: spatial axis to slice across (-1 = last, i.e. axial for RAS-like NIfTI).
        index: ``"middle"`` or an int slice index.
        volume: for 4D data (``meta["n_volumes"]`` set by :class:`~toolkit.transforms.readers.NiftiReader`,
            or more than 1 and not 3 channels) the volume to use; required for 4D data.

    2D input ``(C, H, W)`` passes through unchanged, so the transform is safe in mixed chains.
    NaN / Inf in the chosen slice of a volume raise :class:`~toolkit.transforms.readers.ImageReadError`
    naming the file (``meta["filename_or_obj"]``).
    """

    def __init__(self, axis: int = -1, index: int | str = "middle", volume: int | None = None):
        if not (isinstance(index, int) or index == "middle"):
            raise ValueError(f"index must be 'middle' or an int, got {index!r}")
        self.axis = axis
        self.index = index
        self.volume = volume

    def __call__(self, img: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
        name = _filename(img)
        n_spatial = img.ndim - 1
        if n_spatial == 2:  # already 2D (the readers reject NaN / Inf in float files)
            return img
        if n_spatial != 3:
            raise ImageReadError(
                name, f"expected a channel-first 2D or 3D image, got shape {tuple(img.shape)}"
            )
        meta = getattr(img, "meta", {}) or {}
        n_volumes = int(meta.get("n_volumes", 0) or 0)
        is_4d = n_volumes > 1 or (not n_volumes and img.shape[0] not in (1, 3))
        if is_4d:
            if self.volume is None:
                raise ImageReadError(
                    name, f"4D image with {img.shape[0]} volumes: choose one with volume=<index>"
                )
            if not -img.shape[0] <= self.volume < img.shape[0]:
                raise ImageReadError(name, f"volume {self.volume} out of range for {img.shape[0]} volumes")
            img = img[self.volume : self.volume + 1] if self.volume != -1 else img[-1:]
        axis = self.axis % 3 + 1
        size = img.shape[axis]
        index = size // 2 if self.index == "middle" else int(self.index)
        if not -size <= index < size:
            raise ImageReadError(name, f"slice {index} out of range for {size} slices along axis {self.axis}")
        out = img.select(axis, index) if isinstance(img, torch.Tensor) else np.take(img, index, axis=axis)
        if isinstance(out, MetaTensor):
            out.meta["spatial_shape"] = np.asarray(out.shape[1:])
            out.meta["slice_index"] = index % size
            out.meta["slice_axis"] = self.axis
        self._check_finite(out, name)
        return out

    @staticmethod
    def _check_finite(img, name: str | None) -> None:
        data = img if isinstance(img, torch.Tensor) else torch.as_tensor(img)
        if data.is_floating_point() and not bool(torch.isfinite(data).all()):
            raise ImageReadError(name, "image contains NaN or Inf values")


class SelectSliced(MapTransform):
    """Dictionary form of :class:`SelectSlice`."""

    def __init__(
        self,
        keys: KeysCollection,
        axis: int = -1,
        index: int | str = "middle",
        volume: int | None = None,
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        self.slicer = SelectSlice(axis=axis, index=index, volume=volume)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.slicer(d[key])
        return d


COLOUR_POLICIES = ("rgb", "grey")


def colour_policy(colour: str) -> str:
    """``colour`` checked and normalised (``"gray"`` / ``"RGB"`` ... accepted)."""
    value = {"gray": "grey", "greyscale": "grey", "grayscale": "grey", "color": "rgb", "colour": "rgb"}.get(
        str(colour).strip().lower(), str(colour).strip().lower()
    )
    if value not in COLOUR_POLICIES:
        raise ValueError(f"colour must be one of {COLOUR_POLICIES}, got {colour!r}")
    return value


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


class AsChannels(Transform):
    """Give a channel-first image ``channels`` channels under a colour policy.

    ``colour="rgb"`` (default): colour is kept; grey is repeated to ``channels``; a colour image
    for a 1-channel network becomes its luminance (BT.601 weights). ``colour="grey"``: every
    colour image becomes its luminance first, then is repeated to ``channels``, so grey and
    colour files of one data set look alike to the network. Any other channel count is an error
    naming the file.
    """

    def __init__(self, channels: int, colour: str = "rgb"):
        if channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        self.channels = channels
        self.colour = colour_policy(colour)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        have = img.shape[0]
        if have == 3 and (self.colour == "grey" or self.channels == 1):
            weights = torch.as_tensor(LUMINANCE, dtype=img.dtype, device=img.device).view(
                3, *([1] * (img.ndim - 1))
            )
            img = (img * weights).sum(dim=0, keepdim=True)
            have = 1
        if have == self.channels:
            return img
        if have == 1:
            return img.repeat(self.channels, *([1] * (img.ndim - 1)))
        raise ImageReadError(_filename(img), f"image has {have} channels, cannot convert to {self.channels}")


class AsChannelsd(MapTransform):
    """Dictionary form of :class:`AsChannels`."""

    def __init__(
        self, keys: KeysCollection, channels: int, colour: str = "rgb", allow_missing_keys: bool = False
    ):
        super().__init__(keys, allow_missing_keys)
        self.converter = AsChannels(channels, colour)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.converter(d[key])
        return d


def label_to_tensor(label: int | Sequence[int] | np.ndarray | torch.Tensor) -> torch.Tensor:
    """Class index -> int64 scalar tensor; multi-hot list -> float32 vector (for BCE losses)."""
    if isinstance(label, MetaTensor):
        label = label.as_tensor()
    t = label if isinstance(label, torch.Tensor) else torch.as_tensor(np.asarray(label))
    if t.ndim == 0:
        return t.to(torch.int64)
    return t.to(torch.float32)


class LabelToTensord(MapTransform):
    """Dictionary transform applying :func:`label_to_tensor` (plain tensors, no metadata)."""

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = label_to_tensor(d[key])
        return d


def invert_intensity(img: torch.Tensor) -> torch.Tensor:
    """Mirror intensities within the image's own range (``max + min - x``): bright <-> dark."""
    return img.max() + img.min() - img
