"""Named augmentation presets from the studies the bundles reproduce: lists of MONAI random
dictionary transforms for channel-first 2D images ``(C, H, W)`` on the [0, 1] scale of the
intensity preset (black = 0, so "zero padding" is black; ImageNet's mean / std is applied after
them, see :func:`~toolkit.transforms.intensity.intensity_stages`). "Horizontal" flips mirror
left-right, i.e. the W axis (spatial axis 1).

Every preset states in its docstring what the study reports and which values are our assumption
where the study is silent. Probabilities and ranges are keyword-overridable. All transforms are
MONAI ``Randomizable``: seed them with ``monai.utils.set_determinism(seed)`` or
``Compose(...).set_random_state(seed)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.transforms import (
    CenterScaleCropd,
    Compose,
    Identityd,
    MapTransform,
    OneOf,
    RandAdjustContrastd,
    RandAffined,
    RandFlipd,
    RandGaussianNoised,
    RandLambdad,
    RandomizableTransform,
    RandRotate90d,
    RandRotated,
    RandScaleIntensityd,
    RandShiftIntensityd,
    RandZoomd,
    Resized,
)
from monai.utils.type_conversion import convert_to_tensor

from toolkit.transforms.utility import invert_intensity

__all__ = [
    "AUGMENTATION_PRESETS",
    "COVID_MINORITY_KINDS",
    "augmentation_transforms",
    "covid_minority_synthesis",
    "RandGaussianBlurKerneld",
]


def _deg(angle: float) -> float:
    return math.radians(angle)


class RandGaussianBlurKerneld(RandomizableTransform, MapTransform):
    """Gaussian blur with a fixed kernel size (default 3x3) and a random sigma.

    Own transform because MONAI's Gaussian smoothers size the kernel from sigma (about 4 sigma
    each side) and cannot express the COVID study's "3x3 kernel, sigma 4-5 or 6-8".
    A sigma range is chosen uniformly from ``sigma_ranges``, then sigma uniformly inside it.
    Edges are reflected; each channel is blurred separately.
    """

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 1.0,
        kernel_size: int = 3,
        sigma_ranges: Sequence[tuple[float, float]] = ((4.0, 5.0), (6.0, 8.0)),
        allow_missing_keys: bool = False,
    ):
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and positive, got {kernel_size}")
        self.kernel_size = kernel_size
        self.sigma_ranges = [tuple(map(float, r)) for r in sigma_ranges]
        self.sigma = self.sigma_ranges[0][0]

    def randomize(self, data: Any = None) -> None:
        super().randomize(None)
        if not self._do_transform:
            return
        low, high = self.sigma_ranges[self.R.randint(len(self.sigma_ranges))]
        self.sigma = float(self.R.uniform(low, high))

    def _blur(self, img: torch.Tensor) -> torch.Tensor:
        x = torch.arange(self.kernel_size, dtype=torch.float32) - self.kernel_size // 2
        g = torch.exp(-(x**2) / (2 * self.sigma**2))
        g = g / g.sum()
        kernel = (g[:, None] * g[None, :]).to(img.dtype)
        c = img.shape[0]
        pad = self.kernel_size // 2
        x_in = F.pad(
            img.as_tensor()[None] if hasattr(img, "as_tensor") else img[None], (pad,) * 4, mode="reflect"
        )
        out = F.conv2d(x_in, kernel.expand(c, 1, -1, -1).contiguous(), groups=c)[0]
        if hasattr(img, "meta"):
            out = convert_to_tensor(out, track_meta=True)
            out.copy_meta_from(img)
        return out

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize()
        if not self._do_transform:
            return d
        for key in self.key_iterator(d):
            d[key] = self._blur(convert_to_tensor(d[key], dtype=torch.float32))
        return d


def _brightness_contrast(keys, prob: float, brightness: float, contrast: float) -> list:
    """Multiplicative brightness (x * (1 + U(-b, b))) and gamma contrast (gamma in 1 +/- c)."""
    out = []
    if brightness > 0:
        out.append(RandScaleIntensityd(keys, factors=brightness, prob=prob))
    if contrast > 0:
        out.append(RandAdjustContrastd(keys, gamma=(1.0 - contrast, 1.0 + contrast), prob=prob))
    return out


def _none(keys: KeysCollection, image_size: int) -> list:
    """No augmentation."""
    return []


def _brain_ct(
    keys: KeysCollection,
    image_size: int,
    rotate_deg: float = 15.0,
    rotate_prob: float = 0.5,
    flip_prob: float = 0.5,
    zoom: tuple[float, float] = (0.9, 1.1),
    zoom_prob: float = 0.5,
    brightness: float = 0.1,
    contrast: float = 0.1,
    intensity_prob: float = 0.5,
) -> list:
    """Brain CT (ResNet-18 fine-tuned on a tiny 3-class set).

    Study: rotation +/-15 deg, horizontal flip, zoom 0.9-1.1, small brightness / contrast changes.
    Our assumptions (study silent): each applied with probability 0.5; brightness = x * U(0.9, 1.1);
    contrast = gamma U(0.9, 1.1); zero padding outside the rotated image.
    """
    return [
        RandRotated(keys, range_x=_deg(rotate_deg), prob=rotate_prob, keep_size=True, padding_mode="zeros"),
        RandFlipd(keys, spatial_axis=1, prob=flip_prob),
        RandZoomd(
            keys, min_zoom=zoom[0], max_zoom=zoom[1], prob=zoom_prob, keep_size=True, padding_mode="constant"
        ),
        *_brightness_contrast(keys, intensity_prob, brightness, contrast),
    ]


def _pneumonia(
    keys: KeysCollection,
    image_size: int,
    rotate_deg: float = 10.0,
    scale: float = 0.1,
    translate: float = 0.1,
    prob: float = 1.0,
) -> list:
    """Paediatric chest X-ray pneumonia (ResNet-50).

    Study: random rotation (+/-10 deg), scaling (0.9-1.1), translation (+/-10 %); no flips.
    Our assumptions: one random affine drawn for every image (prob 1.0, as Keras'
    ``ImageDataGenerator`` does), translation as a fraction of ``image_size``, zero padding.
    """
    shift = translate * image_size
    return [
        RandAffined(
            keys,
            prob=prob,
            rotate_range=_deg(rotate_deg),
            scale_range=(scale, scale),
            translate_range=(shift, shift),
            padding_mode="zeros",
        )
    ]


def _chestxray14(
    keys: KeysCollection,
    image_size: int,
    flip_prob: float = 0.5,
    rotate_deg: float = 10.0,
    rotate_prob: float = 0.5,
    zoom: tuple[float, float] = (0.9, 1.1),
    zoom_prob: float = 0.5,
    brightness: float = 0.1,
    contrast: float = 0.1,
    intensity_prob: float = 0.5,
) -> list:
    """NIH ChestX-ray14 (multi-scale ResNet study).

    Study: rotation, scaling, horizontal flip, brightness / contrast changes.
    Our assumptions: rotation +/-10 deg, zoom 0.9-1.1, probability 0.5 each; brightness
    x * U(0.9, 1.1); gamma U(0.9, 1.1).
    """
    return [
        RandFlipd(keys, spatial_axis=1, prob=flip_prob),
        RandRotated(keys, range_x=_deg(rotate_deg), prob=rotate_prob, keep_size=True, padding_mode="zeros"),
        RandZoomd(
            keys, min_zoom=zoom[0], max_zoom=zoom[1], prob=zoom_prob, keep_size=True, padding_mode="constant"
        ),
        *_brightness_contrast(keys, intensity_prob, brightness, contrast),
    ]


def _histopathology(
    keys: KeysCollection,
    image_size: int,
    flip_prob: float = 0.5,
    rot90_prob: float = 0.5,
    colour: float = 0.05,
    brightness: float = 0.05,
    intensity_prob: float = 0.5,
) -> list:
    """LC25000 lung histopathology.

    Study: flips along both axes, 90 deg rotations, small colour / brightness jitter.
    Our assumptions: probability 0.5 each; colour jitter = independent per-channel scale
    x * U(0.95, 1.05); brightness = shift of U(-0.05, 0.05) on the [0, 1] scale.
    """
    return [
        RandFlipd(keys, spatial_axis=0, prob=flip_prob),
        RandFlipd(keys, spatial_axis=1, prob=flip_prob),
        RandRotate90d(keys, prob=rot90_prob, max_k=3, spatial_axes=(0, 1)),
        RandScaleIntensityd(keys, factors=colour, prob=intensity_prob, channel_wise=True),
        RandShiftIntensityd(keys, offsets=brightness, prob=intensity_prob),
    ]


def _deit_histopathology(
    keys: KeysCollection,
    image_size: int,
    flip_prob: float = 0.1,
    rotate_deg: float = 10.0,
    scale: float = 0.1,
    translate: float = 0.1,
    shear: float = 0.1,
    prob: float = 1.0,
) -> list:
    """LC25000 lung histopathology, DeiT distilled from a CNN teacher (``deit_distilled_lung_histo``).

    Study: horizontal flip p=0.1, rotation +/-10 deg, random resized crop 90-110 %, translation
    and shear up to 10 %. Our assumptions: the resized crop is a zoom by 1 + U(-0.1, 0.1) keeping
    the size; rotation, zoom, translation (a fraction of ``image_size``) and shear (factor up to
    0.1 on each axis) form one random affine drawn for every image (prob 1.0, as torchvision's
    ``RandomAffine`` does); zero padding.
    """
    shift = translate * image_size
    return [
        RandFlipd(keys, spatial_axis=1, prob=flip_prob),
        RandAffined(
            keys,
            prob=prob,
            rotate_range=_deg(rotate_deg),
            scale_range=(scale, scale),
            translate_range=(shift, shift),
            shear_range=(shear, shear),
            padding_mode="zeros",
        ),
    ]


COVID_MINORITY_KINDS = ("rotate_crop", "invert", "blur", "noise")


def covid_minority_synthesis(
    kind: str,
    image_size: int = 224,
    keys: KeysCollection = "image",
    max_rotate_deg: float = 6.0,
    crop_fraction: float = 210 / 224,
    sigma_ranges: Sequence[tuple[float, float]] = ((4.0, 5.0), (6.0, 8.0)),
    noise_std: float = 0.05,
) -> list:
    """One of the four minority-class syntheses of the COVID-19 Radiography study (ResNet-D):

    * ``"rotate_crop"``: rotation by up to ``max_rotate_deg`` (6 deg), centre crop of 210/224 of
      the side, resize back to ``image_size`` (study);
    * ``"invert"``: intensity inversion within the image's range (study);
    * ``"blur"``: Gaussian blur, 3x3 kernel, sigma 4-5 or 6-8 (study);
    * ``"noise"``: additive Gaussian noise (study); std up to ``noise_std`` = 0.05 on the
      [0, 1] scale is our assumption (the study gives no value).

    Each returned list always applies its synthesis (prob 1); it is meant to create a synthetic
    minority sample from a real one on the fly.
    """
    if kind == "rotate_crop":
        return [
            RandRotated(keys, range_x=_deg(max_rotate_deg), prob=1.0, keep_size=True, padding_mode="zeros"),
            CenterScaleCropd(keys, roi_scale=crop_fraction),
            Resized(keys, spatial_size=(image_size, image_size), mode="area"),
        ]
    if kind == "invert":
        return [RandLambdad(keys, func=invert_intensity, prob=1.0)]
    if kind == "blur":
        return [RandGaussianBlurKerneld(keys, prob=1.0, kernel_size=3, sigma_ranges=sigma_ranges)]
    if kind == "noise":
        return [RandGaussianNoised(keys, prob=1.0, mean=0.0, std=noise_std)]
    raise ValueError(f"unknown COVID minority synthesis {kind!r}; choose from {COVID_MINORITY_KINDS}")


def _covid_minority(keys: KeysCollection, image_size: int, prob: float = 0.5, **synthesis_kwargs) -> list:
    """COVID-19 Radiography minority classes (ResNet-D).

    Study: minority-class samples synthesised by (1) rotation up to 6 deg + centre crop 210/224 +
    resize back, (2) intensity inversion, (3) 3x3 Gaussian blur with sigma 4-5 or 6-8,
    (4) Gaussian noise. Our assumption for use as on-line augmentation: with probability
    ``prob`` (0.5) one of the four, chosen uniformly, is applied. For offline / on-the-fly
    synthetic samples call :func:`covid_minority_synthesis` directly.
    """
    pieces = [
        Compose(covid_minority_synthesis(k, image_size, keys, **synthesis_kwargs))
        for k in COVID_MINORITY_KINDS
    ]
    weights = [prob / len(pieces)] * len(pieces) + [1.0 - prob]
    return [OneOf([*pieces, Identityd(keys)], weights=weights)]


AUGMENTATION_PRESETS: dict[str, Callable[..., list]] = {
    "none": _none,
    "brain_ct": _brain_ct,
    "pneumonia": _pneumonia,
    "covid_minority": _covid_minority,
    "chestxray14": _chestxray14,
    "histopathology": _histopathology,
    "deit_histopathology": _deit_histopathology,
}


def augmentation_transforms(
    name: str, keys: KeysCollection = "image", image_size: int = 224, **overrides
) -> list:
    """MONAI random transforms of the augmentation preset ``name`` (see :data:`AUGMENTATION_PRESETS`).

    ``overrides`` change the preset's probabilities / ranges (the keyword names are in each
    preset's signature, e.g. ``rotate_deg=10, flip_prob=0.3``); unknown names raise ValueError.
    """
    if name not in AUGMENTATION_PRESETS:
        raise ValueError(f"unknown augmentation preset {name!r}; choose from {sorted(AUGMENTATION_PRESETS)}")
    try:
        return AUGMENTATION_PRESETS[name](keys, image_size, **overrides)
    except TypeError as exc:
        raise ValueError(f"augmentation preset {name!r}: {exc}") from None
