"""Two augmented views of one image, for self-supervised pretraining (``toolkit.engines.ssl``).

The chain is the evaluation chain of classification (load, channels, resize, intensity preset:
the same input the fine-tuned classifier will see), then `TwoViewsd`, which turns ``image``
into ``view1`` and ``view2`` by two independent draws of `view_augmentations`: random resized
crop, horizontal flip, intensity jitter (scale, shift, gamma), Gaussian blur and noise. No
colour jitter or grey-scale conversion (SimCLR's strongest augmentation on natural images):
medical images are grey, so the intensity transforms take that role. No rotation either, as in
SimCLR: it was the slowest MONAI transform here (~9 ms per 64 px view, measured under load) for
a view that crops and flips already. Crops are milder
than SimCLR's (at least 40% of each side, 16% of the area, against 8% of the area) so a view
keeps most of a lesion. Every step is a MONAI transform; `TwoViewsd` is the only new piece, so
``CacheDataset`` caches the deterministic part once and the views are drawn fresh every epoch.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

from monai.transforms import (
    Compose,
    EnsureTyped,
    MapTransform,
    RandAdjustContrastd,
    RandFlipd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    Randomizable,
    RandScaleCropd,
    RandScaleIntensityd,
    RandShiftIntensityd,
    Resized,
)

from toolkit.transforms.chains import classification_transforms

__all__ = ["TwoViewsd", "two_view_transforms", "view_augmentations"]


def view_augmentations(
    keys: str = "image",
    image_size: int = 64,
    min_crop: float = 0.4,
    flip_prob: float = 0.5,
    intensity_prob: float = 0.8,
    intensity: float = 0.25,
    gamma: tuple[float, float] = (0.7, 1.5),
    gamma_prob: float = 0.5,
    blur_prob: float = 0.5,
    noise_std: float = 0.1,
    noise_prob: float = 0.5,
) -> list:
    """The random transforms making one view of a channel-first 2-D image already on its intensity preset.

    ``min_crop``: smallest crop side as a fraction of the image side (each side drawn separately,
    so the aspect ratio varies too); the crop is resized back to ``image_size``. Blur sigma scales
    with the image: 0.2-1.0 px at 64 px. ``intensity``: range of the multiplicative and additive
    jitter, in units of the preset (ImageNet-normalised values have a std of about 1).
    """
    if not 0.0 < min_crop <= 1.0:
        raise ValueError(f"min_crop must be in (0, 1], got {min_crop}")
    sigma = (0.2 * image_size / 64, 1.0 * image_size / 64)
    return [
        RandScaleCropd(keys, roi_scale=min_crop, max_roi_scale=1.0, random_size=True),
        Resized(keys, spatial_size=(image_size, image_size), mode="bilinear"),
        RandFlipd(keys, prob=flip_prob, spatial_axis=1),
        RandScaleIntensityd(keys, factors=intensity, prob=intensity_prob),
        RandShiftIntensityd(keys, offsets=intensity, prob=intensity_prob),
        RandAdjustContrastd(keys, gamma=gamma, prob=gamma_prob),
        RandGaussianSmoothd(keys, sigma_x=sigma, sigma_y=sigma, prob=blur_prob),
        RandGaussianNoised(keys, std=noise_std, prob=noise_prob),
        EnsureTyped(keys, data_type="tensor", dtype="float32", track_meta=False),
    ]


class TwoViewsd(Randomizable, MapTransform):
    """Replace ``key`` by two independently augmented copies under ``view_keys``.

    Own transform because MONAI's dictionary transforms draw one set of random parameters for all
    their keys (``CopyItemsd`` + one chain would make two identical views), and a copy made
    before the first random transform would be cached by ``CacheDataset`` (three images in memory).
    """

    def __init__(
        self,
        key: str = "image",
        view_keys: Sequence[str] = ("view1", "view2"),
        keep_source: bool = False,
        **augmentation_kwargs: Any,
    ):
        MapTransform.__init__(self, key)
        if len(view_keys) != 2 or len(set(view_keys)) != 2:
            raise ValueError(f"two distinct view keys are needed, got {view_keys!r}")
        self.key = key
        self.view_keys = tuple(view_keys)
        self.keep_source = keep_source
        self.chains = [Compose(view_augmentations(key, **augmentation_kwargs)) for _ in self.view_keys]

    def set_random_state(self, seed: int | None = None, state=None) -> TwoViewsd:
        super().set_random_state(seed, state)
        for i, chain in enumerate(self.chains):  # distinct streams, or both views would be identical
            chain.set_random_state(seed=None if seed is None else seed + i + 1, state=state)
        return self

    def randomize(self, data: Any = None) -> None:  # the chains draw their own parameters
        pass

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.key not in d:
            raise KeyError(f"TwoViewsd: no {self.key!r} in the item (keys: {sorted(map(str, d))})")
        source = d[self.key] if self.keep_source else d.pop(self.key)
        for view_key, chain in zip(self.view_keys, self.chains, strict=True):
            d[view_key] = chain({self.key: source})[self.key]
        return d


def two_view_transforms(
    image_size: int = 64,
    channels: int = 3,
    colour: str = "grey",
    intensity: str = "imagenet",
    view_keys: Sequence[str] = ("view1", "view2"),
    augmentation_kwargs: dict | None = None,
    **chain_kwargs: Any,
) -> Compose:
    """``{"image": path}`` -> ``{"view1": tensor, "view2": tensor}`` (labels, if any, are ignored).

    The deterministic part is `classification_transforms(stage="eval")` with the same arguments a
    classification bundle uses (``chain_kwargs`` e.g. ``reader_max_size``), so the trunk learns on
    the input its classifier will get.
    """
    load = classification_transforms(
        stage="eval",
        image_size=image_size,
        channels=channels,
        colour=colour,
        intensity=intensity,
        label_key=None,
        **chain_kwargs,
    )
    views = TwoViewsd("image", view_keys, image_size=image_size, **(augmentation_kwargs or {}))
    return Compose([*load.transforms, views])
