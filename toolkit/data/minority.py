"""Minority-class augmentation: extra synthetic training samples for every class smaller than the largest.

The synthetic samples are not written to disk. Each one is a copy of a training item with a
``synthesis`` key naming how to alter it (``rotate_crop``, ``invert``, ``blur`` or ``noise``); a
transform applies that alteration on the fly after the cached deterministic steps (see
``toolkit.transforms.minority.MinoritySynthesisd``). Only the items passed in are copied, so
giving it the training split alone keeps validation and test images out of the synthetic set.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Sequence

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["SYNTHESIS_KEY", "SYNTHESIS_KINDS", "add_minority_samples", "minority_counts"]

SYNTHESIS_KEY = "synthesis"
# The four syntheses of the COVID-19 Radiography study (implemented in toolkit.transforms.augmentation).
SYNTHESIS_KINDS = ("rotate_crop", "invert", "blur", "noise")


def minority_counts(counts: Sequence[int], percent: float) -> list[int]:
    """Synthetic samples to add per class: ``percent`` % of each class smaller than the largest,
    rounded half up (0 for the largest class and for empty classes)."""
    if percent < 0:
        raise ValueError(f"minority augmentation percent must be >= 0, got {percent}")
    largest = max(counts, default=0)
    return [math.floor(n * percent / 100.0 + 0.5) if 0 < n < largest else 0 for n in counts]


def add_minority_samples(
    items: Sequence[dict],
    percent: float,
    seed: int = 0,
    kinds: Sequence[str] = SYNTHESIS_KINDS,
    key: str = SYNTHESIS_KEY,
    label_key: str = "label",
) -> list[dict]:
    """``items`` plus ``percent`` % synthetic copies of each minority class (see :func:`minority_counts`).

    Pass the TRAINING items only. Every returned item has ``key``: ``""`` for the originals (so
    batches collate), one of ``kinds`` for a synthetic copy. Source images are drawn without
    replacement within a class (cycling when ``percent`` > 100) and the kinds are spread evenly,
    both in a seeded random order. Originals come first, in their input order.
    """
    if not kinds:
        raise ValueError("need at least one synthesis kind")
    if any(isinstance(item[label_key], (list, tuple)) for item in items):
        raise ValueError("minority-class augmentation needs single-label items (multi-hot labels given)")
    labels = [int(item[label_key]) for item in items]
    counter = Counter(labels)
    classes = sorted(counter)
    extra = dict(zip(classes, minority_counts([counter[c] for c in classes], percent), strict=True))
    out = [{**item, key: ""} for item in items]
    rng = np.random.default_rng(seed)
    for c in classes:
        k = extra[c]
        if not k:
            continue
        members = [i for i, label in enumerate(labels) if label == c]
        rounds = math.ceil(k / len(members))
        sources = np.concatenate([rng.permutation(members) for _ in range(rounds)])[:k]
        kind_order = np.concatenate([rng.permutation(len(kinds)) for _ in range(math.ceil(k / len(kinds)))])[
            :k
        ]
        for source, kind in zip(sources, kind_order, strict=True):
            out.append({**items[int(source)], key: kinds[int(kind)]})
        logger.info(
            "minority class %s: %d -> %d items (+%g %% synthetic)", c, counter[c], counter[c] + k, percent
        )
    return out
