"""Two augmented views of one image, for self-supervised pretraining (``toolkit.engines.ssl``).

The chain is the evaluation chain of classification (the bundle's ``loading`` and
``normalisation`` lists: the same input the fine-tuned classifier will see), then `TwoViewsd`, which turns ``image``
into ``view1`` and ``view2`` by two independent draws of the bundle's random transforms (the
``view_augmentation`` list of ``bundles/pretrain_ssl/configs/train.json``, MONAI transforms with
the reasons for each beside it). `TwoViewsd` is the only new piece, so ``CacheDataset`` caches the
deterministic part once and the views are drawn fresh every epoch.
"""

from __future__ import annotations

import copy
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

from monai.transforms import Compose, EnsureTyped, MapTransform, Randomizable

from toolkit.transforms.recorded import build_steps, record_steps

__all__ = ["TwoViewsd", "two_view_transforms"]


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
        augmentation: Sequence | Compose = (),
    ):
        MapTransform.__init__(self, key)
        if len(view_keys) != 2 or len(set(view_keys)) != 2:
            raise ValueError(f"two distinct view keys are needed, got {view_keys!r}")
        steps = list(augmentation.transforms if isinstance(augmentation, Compose) else augmentation)
        if not steps:
            raise ValueError("two views need random transforms to draw them with: augmentation is empty")
        self.key = key
        self.view_keys = tuple(view_keys)
        self.keep_source = keep_source
        # one copy of the transforms per view, each with its own random stream (set_random_state)
        self.chains = [Compose(copy.deepcopy(steps)) for _ in self.view_keys]

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
    loading: Sequence,
    normalisation: Sequence,
    augmentation: Sequence | Compose = (),
    view_keys: Sequence[str] = ("view1", "view2"),
) -> Compose:
    """``{"image": path}`` -> ``{"view1": tensor, "view2": tensor}`` (labels, if any, are ignored).

    The deterministic part is a classification bundle's evaluation chain: ``loading`` and
    ``normalisation``, config components built through their record as
    :func:`~toolkit.transforms.recorded.training_transforms` builds them, so the trunk learns on the
    input its classifier will get; ``augmentation``: the random transforms that make one view (the
    pretraining bundle's ``view_augmentation`` list), drawn twice by :class:`TwoViewsd`.
    """
    load = build_steps(record_steps(loading, "loading") + record_steps(normalisation, "normalisation"))
    plain = EnsureTyped("image", data_type="tensor", dtype="float32", track_meta=False)
    views = TwoViewsd("image", view_keys, augmentation=augmentation)
    return Compose([*load, plain, views])
