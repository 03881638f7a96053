"""Operating points: a decision threshold chosen on validation for a target sensitivity, and the
sensitivity / specificity it gives on the test set.

Clinicians ask "if it catches 95% of the cancers, how many healthy patients does it flag?";
the arg-max (0.5) threshold answers a different question. The threshold is fixed on the
validation set and then applied unchanged to the test set, so the test numbers stay honest.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import confusion_matrix, roc_curve

from toolkit.evaluation.bootstrap import bootstrap_intervals


def threshold_for_sensitivity(y_true_binary, scores, target: float = 0.9) -> float:
    """Highest threshold whose sensitivity (score >= threshold counts as positive) reaches ``target``."""
    y = np.asarray(y_true_binary).astype(int)
    if not 0 < target <= 1:
        raise ValueError(f"target sensitivity must be in (0, 1], got {target}")
    if y.min() == y.max():
        raise ValueError("need both positive and negative cases to choose a threshold")
    fpr, tpr, thresholds = roc_curve(y, np.asarray(scores, dtype=float), drop_intermediate=False)
    # thresholds decrease and tpr increases along the curve; the first point reaching the target
    # is the most specific one that does
    index = int(np.argmax(tpr >= target - 1e-12))
    return float(min(thresholds[index], 1.0)) if np.isfinite(thresholds[index]) else 1.0


def sensitivity_specificity(y_true_binary, scores, threshold: float) -> dict:
    """Sensitivity, specificity, PPV, NPV and the counts when ``score >= threshold`` is positive.
    Ratios with an empty denominator are None."""
    y = np.asarray(y_true_binary).astype(int)
    pred = (np.asarray(scores, dtype=float) >= threshold).astype(int)
    tn, fp, fn, tp = (int(v) for v in confusion_matrix(y, pred, labels=[0, 1]).ravel())

    def ratio(a: int, b: int) -> float | None:
        return a / b if b else None

    return {
        "threshold": float(threshold),
        "sensitivity": ratio(tp, tp + fn),
        "specificity": ratio(tn, tn + fp),
        "ppv": ratio(tp, tp + fp),
        "npv": ratio(tn, tn + fn),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
    }


def _targets(y_true: np.ndarray, class_names: Sequence[str], multi_label: bool, positive_class):
    """(class index, name, binary truth) for each class an operating point is reported for."""
    if multi_label:
        return [(k, name, y_true[:, k]) for k, name in enumerate(class_names)]
    if len(class_names) == 2:
        k = class_names.index(positive_class) if positive_class is not None else 1
        return [(k, class_names[k], (y_true == k).astype(int))]
    # more than two exclusive classes: each class against the rest
    return [(k, name, (y_true == k).astype(int)) for k, name in enumerate(class_names)]


def operating_points(
    val_true,
    val_prob,
    test_true,
    test_prob,
    class_names: Sequence[str],
    target_sensitivity: float = 0.9,
    multi_label: bool = False,
    positive_class: str | None = None,
    test_groups: Sequence | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
) -> dict:
    """Per class: threshold chosen on validation for ``target_sensitivity``, then test
    sensitivity / specificity / PPV / NPV at it with bootstrap 95% intervals (patient-level when
    ``test_groups`` is given). Binary tasks report the positive class (default: the second one);
    multi-label and multi-class tasks report every class (one-vs-rest)."""
    class_names = [str(c) for c in class_names]
    val_true, test_true = np.asarray(val_true), np.asarray(test_true)
    val_prob, test_prob = np.asarray(val_prob, dtype=float), np.asarray(test_prob, dtype=float)
    test_targets = {k: truth for k, _, truth in _targets(test_true, class_names, multi_label, positive_class)}
    points = {}
    for k, name, val_truth in _targets(val_true, class_names, multi_label, positive_class):
        entry: dict = {"target_sensitivity": target_sensitivity}
        try:
            threshold = threshold_for_sensitivity(val_truth, val_prob[:, k], target_sensitivity)
        except ValueError as e:
            entry["error"] = f"no threshold for {name}: validation set {e}"
            points[name] = entry
            continue
        entry["validation"] = sensitivity_specificity(val_truth, val_prob[:, k], threshold)
        truth, scores = test_targets[k], test_prob[:, k]
        entry["test"] = sensitivity_specificity(truth, scores, threshold)

        def statistic(idx, truth=truth, scores=scores, threshold=threshold):
            r = sensitivity_specificity(truth[idx], scores[idx], threshold)
            return {(m,): r[m] for m in ("sensitivity", "specificity", "ppv", "npv")}

        intervals = bootstrap_intervals(statistic, len(truth), test_groups, n_resamples, seed)
        entry["test_intervals"] = {path[0]: ci for path, ci in intervals.items()}
        points[name] = entry
    return points
