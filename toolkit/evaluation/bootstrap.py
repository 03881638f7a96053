"""Bootstrap confidence intervals, resampling patients (not images) where patient ids exist.

Images of one patient are correlated, so resampling images would understate the uncertainty;
resampling whole patients with replacement is the cluster bootstrap. Intervals are the plain
percentile intervals of the seeded resamples. ``scipy.stats.bootstrap`` resamples observations
only, not clusters, and computes one statistic at a time, hence this small loop.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
from scipy.stats import rankdata

from toolkit.evaluation.metrics import classification_metrics, multilabel_metrics

# Metric entries that get an interval (counts such as support or the confusion matrix do not).
_TOP_LEVEL = ("accuracy", "roc_auc_ovr_macro", "roc_auc_macro")
_AVERAGES = ("macro", "weighted")
_PER_CLASS = ("precision", "recall", "f1", "roc_auc")


def flatten_metrics(metrics: Mapping) -> dict[tuple, float | None]:
    """The interval-worthy scalars of a metrics dict, keyed by their path, e.g. ``("macro", "f1")``."""
    flat: dict[tuple, float | None] = {}
    for key in _TOP_LEVEL:
        if key in metrics:
            flat[(key,)] = metrics[key]
    for average in _AVERAGES:
        for name, value in metrics.get(average, {}).items():
            flat[(average, name)] = value
    for cls, values in metrics.get("per_class", {}).items():
        for name in _PER_CLASS:
            if name in values:
                flat[("per_class", cls, name)] = values[name]
    return flat


def _unflatten(flat: Mapping[tuple, object]) -> dict:
    nested: dict = {}
    for path, value in flat.items():
        node = nested
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return nested


def resampling_units(groups: Sequence | None, n: int) -> list[np.ndarray]:
    """Index arrays of the units to resample: one per patient id, or one per image when an id is
    missing (None / empty / NaN)."""
    if groups is None:
        return [np.array([i]) for i in range(n)]
    if len(groups) != n:
        raise ValueError(f"{len(groups)} group ids for {n} samples")
    units: dict[object, list[int]] = {}
    for i, g in enumerate(groups):
        missing = g is None or (isinstance(g, float) and np.isnan(g)) or str(g).strip() == ""
        units.setdefault(("image", i) if missing else ("group", str(g)), []).append(i)
    return [np.asarray(v) for v in units.values()]


# Fast equivalents of the scikit-learn metrics for the resampling loop. scikit-learn's input
# checks and text report cost ~14 ms per call, i.e. 15 s per 1000 resamples; these numpy versions
# (checked against scikit-learn in tests/evaluation/test_eval_bootstrap.py) take well under 1 ms.


def rank_auc(positive: np.ndarray, scores: np.ndarray) -> list[float | None]:
    """One-vs-rest ROC AUC per column via the Mann-Whitney rank sum (ties count one half, as in
    ``sklearn.metrics.roc_auc_score``); ``positive`` and ``scores`` are (N, C)."""
    ranks = rankdata(scores, axis=0)
    n_pos = positive.sum(axis=0)
    n_neg = len(positive) - n_pos
    aucs = []
    for k in range(scores.shape[1]):
        if n_pos[k] == 0 or n_neg[k] == 0:
            aucs.append(None)
            continue
        rank_sum = ranks[positive[:, k], k].sum()
        aucs.append(float((rank_sum - n_pos[k] * (n_pos[k] + 1) / 2) / (n_pos[k] * n_neg[k])))
    return aucs


def _prf(tp: np.ndarray, predicted: np.ndarray, actual: np.ndarray):
    """Precision, recall, F1 per class with scikit-learn's zero_division=0 convention."""
    precision = np.divide(tp, predicted, out=np.zeros(len(tp)), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros(len(tp)), where=actual > 0)
    both = predicted + actual
    f1 = np.divide(2 * tp, both, out=np.zeros(len(tp)), where=both > 0)
    return precision, recall, f1


def _mean_or_none(values: list[float | None]) -> float | None:
    return None if any(v is None for v in values) else float(np.mean(values))


def fast_classification_metrics(y_true, y_prob, class_names: Sequence[str]) -> dict[tuple, float | None]:
    """``flatten_metrics(classification_metrics(...))`` computed with plain numpy."""
    c = len(class_names)
    y_pred = y_prob.argmax(axis=1)
    cm = np.bincount(y_true * c + y_pred, minlength=c * c).reshape(c, c).astype(float)
    tp, predicted, actual = np.diag(cm), cm.sum(axis=0), cm.sum(axis=1)
    precision, recall, f1 = _prf(tp, predicted, actual)
    aucs = rank_auc(y_true[:, None] == np.arange(c)[None, :], y_prob)
    weights = actual / actual.sum()
    flat: dict[tuple, float | None] = {
        ("accuracy",): float(tp.sum() / len(y_true)),
        ("roc_auc_ovr_macro",): _mean_or_none(aucs),
    }
    for name, values in (("precision", precision), ("recall", recall), ("f1", f1)):
        flat[("macro", name)] = float(values.mean())
        flat[("weighted", name)] = float((values * weights).sum())
    for k, cls in enumerate(class_names):
        flat.update(
            {
                ("per_class", cls, "precision"): float(precision[k]),
                ("per_class", cls, "recall"): float(recall[k]),
                ("per_class", cls, "f1"): float(f1[k]),
                ("per_class", cls, "roc_auc"): aucs[k],
            }
        )
    return flat


def fast_multilabel_metrics(
    y_true, y_prob, class_names: Sequence[str], threshold: float
) -> dict[tuple, float | None]:
    """``flatten_metrics(multilabel_metrics(...))`` computed with plain numpy."""
    truth = y_true.astype(bool)
    pred = y_prob >= threshold
    tp = (truth & pred).sum(axis=0).astype(float)
    precision, recall, f1 = _prf(tp, pred.sum(axis=0).astype(float), truth.sum(axis=0).astype(float))
    aucs = rank_auc(truth, y_prob)
    flat: dict[tuple, float | None] = {
        ("accuracy",): float((truth == pred).all(axis=1).mean()),
        ("roc_auc_macro",): _mean_or_none(aucs),
        ("macro", "precision"): float(precision.mean()),
        ("macro", "recall"): float(recall.mean()),
        ("macro", "f1"): float(f1.mean()),
    }
    for k, cls in enumerate(class_names):
        flat.update(
            {
                ("per_class", cls, "precision"): float(precision[k]),
                ("per_class", cls, "recall"): float(recall[k]),
                ("per_class", cls, "f1"): float(f1[k]),
                ("per_class", cls, "roc_auc"): aucs[k],
            }
        )
    return flat


def bootstrap_intervals(
    statistic: Callable[[np.ndarray], Mapping[tuple, float | None]],
    n: int,
    groups: Sequence | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    min_valid_fraction: float = 0.5,
) -> dict[tuple, dict]:
    """Percentile intervals of ``statistic(indices)`` over seeded (cluster) bootstrap resamples.

    ``statistic`` maps an index array into the samples to ``{path: value or None}``. Returns
    ``{path: {"low", "high", "n_valid"}}``; low/high are None when fewer than
    ``min_valid_fraction`` of the resamples define the value (e.g. AUC of a rare class).
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    units = resampling_units(groups, n)
    rng = np.random.default_rng(seed)
    samples: dict[tuple, list[float]] = {}
    for _ in range(n_resamples):
        chosen = rng.integers(0, len(units), size=len(units))
        indices = np.concatenate([units[u] for u in chosen])
        for path, value in statistic(indices).items():
            if value is not None:
                samples.setdefault(path, []).append(float(value))
    alpha = (1 - confidence) / 2
    intervals = {}
    for path, values in samples.items():
        ok = len(values) >= min_valid_fraction * n_resamples
        low, high = np.quantile(values, [alpha, 1 - alpha]) if ok else (None, None)
        intervals[path] = {
            "low": None if low is None else float(low),
            "high": None if high is None else float(high),
            "n_valid": len(values),
        }
    return intervals


def metric_intervals(
    y_true,
    y_prob,
    class_names: Sequence[str],
    groups: Sequence | None = None,
    multi_label: bool = False,
    threshold: float = 0.5,
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict:
    """Bootstrap intervals for every metric of ``classification_metrics`` / ``multilabel_metrics``.

    Returns ``{"intervals": <nested like the metrics, leaves {"low", "high", "n_valid"}>,
    "method": {...}}``; store them with ``add_intervals``.
    """
    y_true = np.asarray(y_true)
    y_prob = np.asarray(y_prob, dtype=float)
    class_names = [str(c) for c in class_names]
    # scikit-learn version once: validates the inputs with clear errors before the loop
    if multi_label:
        multilabel_metrics(y_true, y_prob, class_names, threshold)
    else:
        classification_metrics(y_true, y_prob, class_names)

    def statistic(indices: np.ndarray) -> dict[tuple, float | None]:
        if multi_label:
            return fast_multilabel_metrics(y_true[indices], y_prob[indices], class_names, threshold)
        return fast_classification_metrics(y_true[indices], y_prob[indices], class_names)

    intervals = bootstrap_intervals(statistic, len(y_true), groups, n_resamples, seed, confidence)
    units = resampling_units(groups, len(y_true))
    return {
        "intervals": _unflatten(intervals),
        "method": {
            "kind": "percentile bootstrap",
            "unit": "patient" if groups is not None and len(units) < len(y_true) else "image",
            "num_units": len(units),
            "n_resamples": n_resamples,
            "confidence": confidence,
            "seed": seed,
        },
    }


def add_intervals(metrics: dict, result: Mapping) -> dict:
    """Store ``metric_intervals`` output in ``metrics`` (keys ``confidence_intervals``, ``bootstrap``)."""
    metrics["confidence_intervals"] = result["intervals"]
    metrics["bootstrap"] = result["method"]
    return metrics


def interval_of(metrics: Mapping, *path: str) -> dict | None:
    """The interval stored for a metric path, e.g. ``interval_of(m, "per_class", "glioma", "f1")``."""
    node = metrics.get("confidence_intervals")
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    return node
