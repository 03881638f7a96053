"""Random transforms the studies' augmentation needs and MONAI lacks.

A bundle's augmentation is a list of MONAI transforms in its own ``configs/train.json``
(``"augmentation": [{"_target_": "RandRotated", ...}, ...]``, with the study's words and our
assumptions in each ``_desc_``); this module holds only the transforms such a list names by full
path, e.g. ``toolkit.transforms.RandGaussianBlurKerneld``, and :func:`augmentation_steps`, how
the chains take such a list (:func:`~toolkit.transforms.recorded.training_transforms` runs it
after the loading's [0, 1] scaling and before the normalisation).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.transforms import Compose, MapTransform, RandomizableTransform
from monai.utils.type_conversion import convert_to_tensor

__all__ = ["RandGaussianBlurKerneld", "augmentation_steps"]


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


def augmentation_steps(augmentation: Sequence | Compose | None) -> list:
    """The transforms of an augmentation (a list of transforms, a ``Compose`` or None), as one flat list.

    Flat so that the chain's ``Compose`` seeds each transform itself, as it would any other step.
    A string is refused: augmentation is no longer a preset name but the transforms themselves.
    """
    if augmentation is None:
        return []
    if isinstance(augmentation, str):
        raise TypeError(
            f"augmentation must be a list of transforms, got the name {augmentation!r}: the preset names "
            "are gone; write the transforms (see the 'augmentation' list of a bundle's configs/train.json) "
            "or pass [] for none"
        )
    return list(augmentation.transforms if isinstance(augmentation, Compose) else augmentation)
