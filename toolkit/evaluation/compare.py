"""Comparing classifiers on one test set: metrics with confidence intervals and paired tests.

Every model must have predicted exactly the same test rows (:func:`align_predictions` refuses
otherwise). For each model: accuracy, macro precision / recall / F1 and macro AUROC, each with a
percentile bootstrap interval resampling patients where ids exist (``bootstrap.metric_intervals``;
the same seed gives every model the same resamples). The best model (``rank_by``) is then tested
against each other one, on the same rows:

- accuracy: exact McNemar test (two-sided binomial test on the discordant images, ``scipy.stats
  .binomtest``); it treats images as independent, so where patients have several images the paired
  patient-level bootstrap p-value of the accuracy difference is given beside it;
- AUROC: DeLong's test for a binary task whose images are independent units, otherwise the paired
  patient-level bootstrap of the macro AUROC difference; DeLong per class is kept in the JSON.

P-values are Holm-adjusted over the comparisons of each metric (k models: k - 1 comparisons).
statsmodels (McNemar, Holm) is not a dependency and no maintained DeLong implementation is
installed, so DeLong's fast algorithm (Sun & Xu 2014) and Holm's step-down are written here; both
are checked against brute-force versions in tests/evaluation/test_compare_stats.py.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import binomtest, norm, rankdata

from toolkit.evaluation.bootstrap import (
    fast_classification_metrics,
    fast_multilabel_metrics,
    metric_intervals,
    resampling_units,
)
from toolkit.evaluation.metrics import REPORT_KEY, classification_metrics, multilabel_metrics

# table metric -> path in the flat metrics of ``bootstrap.fast_*_metrics`` (single-label, multi-label)
METRICS = {
    "accuracy": (("accuracy",), ("accuracy",)),
    "precision": (("macro", "precision"), ("macro", "precision")),
    "recall": (("macro", "recall"), ("macro", "recall")),
    "f1": (("macro", "f1"), ("macro", "f1")),
    "auroc": (("roc_auc_ovr_macro",), ("roc_auc_macro",)),
}
RANKABLE = ("auroc", "accuracy", "f1")
Threshold = float | Sequence[float] | np.ndarray  # multi-label decision threshold: one, or one per class


@dataclass
class ComparisonSet:
    """The rows every model predicted, in one order."""

    images: list[str]
    groups: list[str] | None  # patient ids, or None when the predictions carry none
    y_true: np.ndarray  # (N,) class index or (N, C) multi-hot
    class_names: list[str]
    multi_label: bool

    @property
    def units(self) -> list[np.ndarray]:
        return resampling_units(self.groups, len(self.images))

    @property
    def unit(self) -> str:
        return "patient" if len(self.units) < len(self.images) else "image"


def align_predictions(predictions: Mapping[str, object]) -> tuple[ComparisonSet, dict[str, np.ndarray]]:
    """One test set and each model's probabilities in its row order, from ``report.Predictions``.

    Raises ``ValueError`` naming the file when a model's rows (image set, labels, patient ids),
    classes or task differ from the first model's, or when an image is listed twice.
    """
    if not predictions:
        raise ValueError("no predictions to compare")
    names = list(predictions)
    first = predictions[names[0]]
    order = _row_index(first)
    test = ComparisonSet(
        list(first.images),
        first.groups,
        np.asarray(first.y_true),
        list(first.class_names),
        bool(first.multi_label),
    )
    probs = {names[0]: np.asarray(first.probs, dtype=float)}
    for name in names[1:]:
        pred = predictions[name]
        where = f"{pred.path} ({name}) against {first.path} ({names[0]})"
        if list(pred.class_names) != test.class_names or bool(pred.multi_label) != test.multi_label:
            raise ValueError(f"{where}: classes differ: {pred.class_names} vs {test.class_names}")
        rows = _row_index(pred)
        missing, extra = set(order) - set(rows), set(rows) - set(order)
        if missing or extra:
            raise ValueError(
                f"{where}: the test rows differ ({len(missing)} image(s) missing, {len(extra)} extra, e.g. "
                f"{sorted(missing or extra)[0]}); models must be evaluated on the same test set"
            )
        take = np.array([rows[image] for image in test.images])
        if not np.array_equal(np.asarray(pred.y_true)[take], test.y_true):
            raise ValueError(f"{where}: the same images carry different labels")
        if [pred.patient_ids[i] for i in take] != list(first.patient_ids):
            raise ValueError(f"{where}: the same images carry different patient ids")
        probs[name] = np.asarray(pred.probs, dtype=float)[take]
    return test, probs


def _row_index(pred) -> dict[str, int]:
    index: dict[str, int] = {}
    for i, image in enumerate(pred.images):
        if image in index:
            raise ValueError(f"{pred.path}: image {image} is listed twice")
        index[image] = i
    return index


# ---------------------------------------------------------------------------------------------
# Per-model metrics


def correct(test: ComparisonSet, probs: np.ndarray, threshold: Threshold = 0.5) -> np.ndarray:
    """Per image: was the prediction right (arg-max class; multi-label: every finding at ``threshold``)."""
    if test.multi_label:
        return ((probs >= threshold) == test.y_true.astype(bool)).all(axis=1)
    return probs.argmax(axis=1) == test.y_true


def _flat(test: ComparisonSet, probs: np.ndarray, indices: np.ndarray, threshold: Threshold) -> dict:
    if test.multi_label:
        return fast_multilabel_metrics(test.y_true[indices], probs[indices], test.class_names, threshold)
    return fast_classification_metrics(test.y_true[indices], probs[indices], test.class_names)


def _pick(flat: Mapping, test: ComparisonSet) -> dict[str, float | None]:
    return {name: flat.get(paths[int(test.multi_label)]) for name, paths in METRICS.items()}


def model_metrics(
    test: ComparisonSet,
    probs: np.ndarray,
    threshold: Threshold,
    n_resamples: int,
    seed: int,
    confidence: float,
) -> dict:
    """``{"metrics": {accuracy, precision, recall, f1, auroc}, "intervals": {name: {low, high}},
    "full": the classification_metrics / multilabel_metrics dict with its intervals}``."""
    if test.multi_label:
        full = multilabel_metrics(test.y_true, probs, test.class_names, threshold)
    else:
        full = classification_metrics(test.y_true, probs, test.class_names)
    full.pop(REPORT_KEY, None)
    ci = metric_intervals(
        test.y_true,
        probs,
        test.class_names,
        test.groups,
        test.multi_label,
        threshold,
        n_resamples=n_resamples,
        seed=seed,
        confidence=confidence,
    )
    full["confidence_intervals"], full["bootstrap"] = ci["intervals"], ci["method"]
    intervals = {}
    for name, paths in METRICS.items():
        node = ci["intervals"]
        for key in paths[int(test.multi_label)]:
            node = node.get(key, {}) if isinstance(node, Mapping) else {}
        intervals[name] = {"low": node.get("low"), "high": node.get("high")}
    everything = _flat(test, probs, np.arange(len(test.images)), threshold)
    return {"metrics": _pick(everything, test), "intervals": intervals, "full": full}


# ---------------------------------------------------------------------------------------------
# Paired tests


def mcnemar(correct_reference, correct_other) -> dict:
    """Exact McNemar test of two classifiers on the same images: two-sided binomial test of the
    discordant pairs (``b``: only the reference right, ``c``: only the other right) against 1/2."""
    ref, other = np.asarray(correct_reference, bool), np.asarray(correct_other, bool)
    b, c = int((ref & ~other).sum()), int((~ref & other).sum())
    p = 1.0 if b + c == 0 else float(binomtest(b, b + c, 0.5).pvalue)
    return {"test": "McNemar exact", "b_reference_only": b, "c_other_only": c, "p_value": p}


def delong_covariance(positive, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUCs and their DeLong covariance for k score rows (k, N) on one binary truth (N,).

    Fast algorithm of Sun & Xu (2014): the structural components come from mid-ranks within the
    positives, the negatives and both, in O(k N log N) instead of DeLong's O(k m n) comparisons.
    """
    positive = np.asarray(positive, bool)
    scores = np.atleast_2d(np.asarray(scores, dtype=float))
    m, n = int(positive.sum()), int((~positive).sum())
    if m < 2 or n < 2:  # the variance of a side with one image cannot be estimated
        raise ValueError(f"DeLong's test needs at least 2 positive and 2 negative images, got {m} and {n}")
    pos, neg = scores[:, positive], scores[:, ~positive]
    rank_pos, rank_neg = rankdata(pos, axis=1), rankdata(neg, axis=1)
    rank_all = rankdata(np.concatenate([pos, neg], axis=1), axis=1)
    aucs = (rank_all[:, :m].sum(axis=1) - m * (m + 1) / 2) / (m * n)
    v_pos = (rank_all[:, :m] - rank_pos) / n  # per positive: fraction of negatives scored below it
    v_neg = 1.0 - (rank_all[:, m:] - rank_neg) / m  # per negative: fraction of positives scored above it
    return aucs, np.atleast_2d(np.cov(v_pos)) / m + np.atleast_2d(np.cov(v_neg)) / n


def delong(positive, scores_reference, scores_other) -> dict:
    """DeLong's test of two correlated AUCs (same images): two-sided z test of the difference.

    ``p_value`` is None when the estimated variance of the difference is zero (e.g. both AUCs 1)."""
    aucs, cov = delong_covariance(positive, np.vstack([scores_reference, scores_other]))
    difference = float(aucs[1] - aucs[0])
    variance = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    if variance <= 1e-15:
        z, p = None, (1.0 if abs(difference) < 1e-12 else None)
    else:
        z = difference / math.sqrt(variance)
        p = float(2 * norm.sf(abs(z)))
    return {
        "test": "DeLong",
        "auc_reference": float(aucs[0]),
        "auc_other": float(aucs[1]),
        "difference": difference,
        "z": z,
        "p_value": p,
    }


def paired_bootstrap(
    test: ComparisonSet,
    probs_reference: np.ndarray,
    probs_other: np.ndarray,
    threshold: Threshold = 0.5,
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    other_threshold: Threshold | None = None,
) -> dict[str, dict]:
    """Paired (patient-level where ids exist) bootstrap of ``other - reference`` for every metric.

    Both models are scored on the same resampled patients (multi-label: the reference at
    ``threshold``, the other at ``other_threshold``, default the same). Per metric: ``difference`` (on all rows),
    the percentile interval ``low`` / ``high``, and the two-sided p-value ``2 min(P*(d <= 0),
    P*(d >= 0))`` with the usual +1 correction, i.e. the smallest level at which the percentile
    interval excludes 0; None when fewer than half of the resamples define the metric. When no
    resample reaches 0, p is the smallest value the resamples can give (``p_is_bound``).
    """
    units = test.units
    rng = np.random.default_rng(seed)
    everything = np.arange(len(test.images))
    thresholds = (threshold, threshold if other_threshold is None else other_threshold)
    observed = _difference(test, probs_reference, probs_other, everything, thresholds)
    samples: dict[str, list[float]] = {name: [] for name in METRICS}
    for _ in range(n_resamples):
        chosen = rng.integers(0, len(units), size=len(units))
        indices = np.concatenate([units[u] for u in chosen])
        for name, value in _difference(test, probs_reference, probs_other, indices, thresholds).items():
            if value is not None:
                samples[name].append(value)
    alpha = (1 - confidence) / 2
    result = {}
    for name, values in samples.items():
        d = np.asarray(values)
        enough = len(d) >= n_resamples / 2
        low, high = np.quantile(d, [alpha, 1 - alpha]) if enough else (None, None)
        p, tail = None, None
        if enough:
            tail = int(min((d <= 0).sum(), (d >= 0).sum()))
            p = float(min(1.0, 2 * (tail + 1) / (len(d) + 1)))
        result[name] = {
            "difference": observed[name],
            "low": None if low is None else float(low),
            "high": None if high is None else float(high),
            "p_value": p,
            "n_valid": len(d),
            "p_is_bound": tail == 0,
        }
    return result


def _difference(test, probs_reference, probs_other, indices, thresholds) -> dict[str, float | None]:
    ref = _pick(_flat(test, probs_reference, indices, thresholds[0]), test)
    other = _pick(_flat(test, probs_other, indices, thresholds[1]), test)
    return {k: None if ref[k] is None or other[k] is None else other[k] - ref[k] for k in METRICS}


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjustment (family-wise error) of the given p-values; None stays None."""
    given = [(p, i) for i, p in enumerate(p_values) if p is not None]
    adjusted: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(sorted(given)):
        running = max(running, min(1.0, (len(given) - rank) * p))
        adjusted[i] = running
    return adjusted


def per_class_delong(test: ComparisonSet, probs_reference: np.ndarray, probs_other: np.ndarray) -> list[dict]:
    """DeLong's test per class (one-vs-rest, or per finding); unadjusted, images as independent units."""
    rows = []
    for k, name in enumerate(test.class_names):
        positive = test.y_true[:, k] == 1 if test.multi_label else test.y_true == k
        counts = {"class": name, "n_positive": int(positive.sum()), "n_negative": int((~positive).sum())}
        try:
            rows.append({**counts, **delong(positive, probs_reference[:, k], probs_other[:, k])})
        except ValueError as err:  # too few positives or negatives in the test set
            rows.append({**counts, "p_value": None, "note": str(err)})
    return rows


# ---------------------------------------------------------------------------------------------
# The comparison


def _compare_pair(
    test: ComparisonSet,
    probs: Mapping[str, np.ndarray],
    own: Mapping[str, Threshold],
    reference: str,
    name: str,
    binary_independent: bool,
    n_resamples: int,
    seed: int,
    confidence: float,
) -> dict:
    """The paired tests of model ``name`` against the ``reference``: accuracy by McNemar, AUROC by DeLong
    (binary, images independent) or by the paired bootstrap, and DeLong per class."""
    boot = paired_bootstrap(
        test,
        probs[reference],
        probs[name],
        own[reference],
        n_resamples,
        seed,
        confidence,
        other_threshold=own[name],
    )
    right = correct(test, probs[reference], own[reference]), correct(test, probs[name], own[name])
    accuracy = {
        "difference": boot["accuracy"]["difference"],
        "test": "McNemar exact",
        "mcnemar": mcnemar(*right),
        "bootstrap": boot["accuracy"],
    }
    accuracy["p_value"] = accuracy["mcnemar"]["p_value"]
    auroc = {"difference": boot["auroc"]["difference"], "bootstrap": boot["auroc"]}
    if binary_independent:
        auroc["delong"] = delong(test.y_true == 1, probs[reference][:, 1], probs[name][:, 1])
        auroc.update(test="DeLong", p_value=auroc["delong"]["p_value"])
    else:
        auroc.update(
            test="paired bootstrap", p_value=boot["auroc"]["p_value"], p_is_bound=boot["auroc"]["p_is_bound"]
        )
    return {
        "accuracy": accuracy,
        "auroc": auroc,
        "bootstrap": boot,
        "per_class_delong": per_class_delong(test, probs[reference], probs[name]),
    }


def compare_predictions(
    test: ComparisonSet,
    probs: Mapping[str, np.ndarray],
    threshold: Threshold | Mapping[str, Threshold] = 0.5,
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    alpha: float = 0.05,
    rank_by: str = "auroc",
) -> dict:
    """Metrics with intervals for every model and paired tests of the best one against each other.

    ``threshold`` (multi-label): one for every model, or ``{model: threshold}``; a threshold is a
    number or one per class (e.g. each model's own, chosen on validation by its evaluation).
    The best model has the highest ``rank_by`` value (``auroc``, ``accuracy`` or ``f1``; AUROC falls
    back to accuracy when a class is missing from the test set). A model is ``worse`` / ``better``
    on a metric when its Holm-adjusted p-value is below ``alpha``, by the sign of the difference.
    Returns a JSON-ready dict (see docs/compare.md).
    """
    if rank_by not in RANKABLE:
        raise ValueError(f"rank_by must be one of {RANKABLE}, got {rank_by!r}")
    own = {name: threshold[name] if isinstance(threshold, Mapping) else threshold for name in probs}
    models = {
        name: model_metrics(test, p, own[name], n_resamples, seed, confidence) for name, p in probs.items()
    }
    for name in models:
        models[name]["threshold"] = _as_json(own[name]) if test.multi_label else None
    ranked_by = rank_by
    if any(m["metrics"][rank_by] is None for m in models.values()):
        ranked_by = "accuracy"
    reference = max(models, key=lambda name: models[name]["metrics"][ranked_by])
    positives = int((test.y_true == 1).sum()) if not test.multi_label else 0
    binary_independent = (
        not test.multi_label
        and len(test.class_names) == 2
        and test.unit == "image"
        and min(positives, len(test.y_true) - positives) >= 2  # else DeLong's variance is unknown
    )
    comparisons = {
        name: _compare_pair(
            test, probs, own, reference, name, binary_independent, n_resamples, seed, confidence
        )
        for name in models
        if name != reference
    }
    for metric in ("accuracy", "auroc"):
        names = list(comparisons)
        for name, adjusted in zip(
            names, holm([comparisons[n][metric]["p_value"] for n in names]), strict=True
        ):
            entry = comparisons[name][metric]
            entry["p_holm"] = adjusted
            entry["verdict"] = _verdict(entry["difference"], adjusted, alpha)
    return {
        "test_set": {
            "num_images": len(test.images),
            "num_units": len(test.units),
            "unit": test.unit,
            "class_names": test.class_names,
            "multi_label": test.multi_label,
        },
        "settings": {
            "n_resamples": n_resamples,
            "seed": seed,
            "confidence": confidence,
            "alpha": alpha,
            "rank_by": rank_by,
            "ranked_by": ranked_by,
            "correction": "Holm, per metric",
        },
        "reference": reference,
        "models": models,
        "comparisons": comparisons,
    }


def _as_json(threshold: Threshold) -> float | list[float]:
    return float(threshold) if np.ndim(threshold) == 0 else [float(t) for t in threshold]


def _verdict(difference: float | None, p_adjusted: float | None, alpha: float) -> str:
    if difference is None or p_adjusted is None:
        return "n/a"
    if p_adjusted >= alpha:
        return "n.s."
    return "worse" if difference < 0 else "better"
