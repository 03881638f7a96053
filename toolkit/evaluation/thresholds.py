"""Per-class decision thresholds of a multi-label model, chosen on the validation set.

CheXNet-style tables report precision, recall and F1 per finding at an operating point; 0.5 is a
poor one for rare findings trained with positive weights. Here each finding gets the threshold
that maximises its F1 on the validation predictions (scikit-learn's precision-recall curve), so
the test set never chooses its own thresholds.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from sklearn.metrics import precision_recall_curve

from toolkit.io import atomic_write_json

logger = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 0.5  # for a finding without positives (or without negatives) in validation
THRESHOLDS_FILE = "thresholds.json"  # beside the model's weights, like temperature.json


def best_f1_threshold(truth: np.ndarray, scores: np.ndarray) -> float:
    """The score threshold of the highest F1 of one finding (``DEFAULT_THRESHOLD`` if undefined)."""
    truth = np.asarray(truth).astype(int)
    if truth.min(initial=0) == truth.max(initial=0):
        return DEFAULT_THRESHOLD
    precision, recall, thresholds = precision_recall_curve(truth, scores)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    return float(thresholds[int(np.argmax(f1[:-1]))])  # the last point (recall 0) has no threshold


def choose_thresholds(y_true, y_prob, class_names: Sequence[str]) -> dict[str, float]:
    """``{class: threshold}`` maximising each class's F1 on multi-hot ``y_true`` (N, C) and ``y_prob``."""
    y_true, y_prob = np.asarray(y_true), np.asarray(y_prob, dtype=float)
    chosen = {}
    for k, name in enumerate(class_names):
        chosen[str(name)] = best_f1_threshold(y_true[:, k], y_prob[:, k])
        if chosen[str(name)] == DEFAULT_THRESHOLD and len(set(y_true[:, k].tolist())) < 2:
            logger.warning(
                "%s has one outcome only in the validation set: threshold %.1f", name, DEFAULT_THRESHOLD
            )
    return chosen


def save_thresholds(chosen: dict[str, float], path: str | os.PathLike, num_images: int) -> None:
    atomic_write_json(path, {"rule": "max F1 on validation", "num_images": num_images, "thresholds": chosen})
    logger.info("thresholds chosen on %d validation images written to %s", num_images, path)


def load_thresholds(path: str | os.PathLike) -> dict[str, float]:
    """The ``thresholds`` of a file written by :func:`save_thresholds`."""
    with open(path, encoding="utf-8") as f:
        return {str(k): float(v) for k, v in json.load(f)["thresholds"].items()}


def evaluation_threshold(eval_dir: str | os.PathLike, class_names: Sequence[str]) -> np.ndarray | float:
    """The per-class thresholds an evaluation used (the ``threshold`` its ``metrics.json`` records), else 0.5."""
    path = Path(eval_dir) / "metrics.json"
    used = json.loads(path.read_text(encoding="utf-8")).get("threshold") if path.is_file() else None
    if isinstance(used, list) and len(used) == len(class_names):
        return np.asarray(used, dtype=float)
    return DEFAULT_THRESHOLD


def threshold_vector(thresholds: dict[str, float] | None, class_names: Sequence[str]) -> np.ndarray:
    """Per-class thresholds in ``class_names`` order (``DEFAULT_THRESHOLD`` where none is given)."""
    thresholds = thresholds or {}
    return np.asarray([float(thresholds.get(str(c), DEFAULT_THRESHOLD)) for c in class_names])
