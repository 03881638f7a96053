"""On-the-fly minority-class synthesis for items made by ``toolkit.data.minority.add_minority_samples``."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

from monai.config import KeysCollection
from monai.transforms import Compose, EnsureTyped, MapTransform, Randomizable

from toolkit.transforms.augmentation import augmentation_steps
from toolkit.transforms.recorded import build_steps, record_steps
from toolkit.transforms.utility import LabelToTensord

__all__ = ["MinoritySynthesisd", "minority_training_transforms"]


class MinoritySynthesisd(Randomizable, MapTransform):
    """Apply the synthesis named by ``data[kind_key]``; items whose ``kind_key`` is empty or missing
    pass unchanged. A random transform, so ``CacheDataset`` caches the steps before it.

    ``syntheses`` maps each kind to its transforms (a list or a ``Compose``): the study's recipe, in
    the bundle's config (``minority_synthesis`` of ``bundles/resnet_d_covid_cxr/configs/train.json``:
    rotate_crop, invert, blur, noise). Each kind runs as its own ``Compose``, seeded in the mapping's order.
    """

    def __init__(
        self,
        keys: KeysCollection,
        syntheses: Mapping[str, Sequence | Compose],
        kind_key: str = "synthesis",
        allow_missing_keys: bool = False,
    ):
        MapTransform.__init__(self, keys, allow_missing_keys)
        if not syntheses:
            raise ValueError("MinoritySynthesisd needs at least one synthesis (kind -> transforms)")
        self.kind_key = kind_key
        self.syntheses = {kind: Compose(augmentation_steps(steps)) for kind, steps in syntheses.items()}

    def set_random_state(self, seed: int | None = None, state=None) -> MinoritySynthesisd:
        super().set_random_state(seed, state)
        for n, synthesis in enumerate(self.syntheses.values()):
            synthesis.set_random_state(seed=None if seed is None else seed + n, state=state)
        return self

    def randomize(self, data: Any = None) -> None:  # the sub-transforms draw their own parameters
        pass

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        kind = d.get(self.kind_key) or ""
        if not kind:
            return d
        if kind not in self.syntheses:
            raise ValueError(
                f"unknown synthesis {kind!r} in item {d.get('image', '')!s}; known: {list(self.syntheses)}"
            )
        return self.syntheses[kind](d)


def minority_training_transforms(
    syntheses: Mapping[str, Sequence | Compose],
    loading: Sequence,
    normalisation: Sequence,
    augmentation: Sequence | Compose | None = None,
    keys: str = "image",
) -> Compose:
    """Training chain with minority synthesis: the bundle's ``loading`` (its config components, built
    through their record as :func:`~toolkit.transforms.recorded.training_transforms` does, cached) ->
    :class:`MinoritySynthesisd` with ``syntheses`` on the [0, 1] image -> ``augmentation`` (also on
    the [0, 1] scale) -> ``normalisation``. For items without a synthesis this equals the bundle's
    training chain without synthesis. One flat ``Compose`` so that ``CacheDataset`` can cache up to
    the first random step.
    """
    steps = [
        *build_steps(record_steps(loading, "loading"), "loading"),
        EnsureTyped(keys, data_type="tensor", dtype="float32", track_meta=False),
        LabelToTensord("label", allow_missing_keys=True),
        MinoritySynthesisd(keys, syntheses),
        *augmentation_steps(augmentation),
        *build_steps(record_steps(normalisation, "normalisation"), "normalisation"),
        EnsureTyped(keys, data_type="tensor", dtype="float32", track_meta=False),
    ]
    return Compose(steps)
