"""Classification metrics (scikit-learn) and the files an evaluation writes.

``classification_metrics`` and ``multilabel_metrics`` return plain, JSON-ready dicts (floats,
ints, lists; ``None`` where a value is undefined, e.g. the ROC AUC of a class absent from the
set). ``write_metrics`` writes them as ``metrics.json``, ``per_class.csv``,
``confusion_matrix.csv`` and ``classification_report.txt``, each atomically.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    classification_report,
    confusion_matrix,
    multilabel_confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
)

from toolkit.io import atomic_write_json, atomic_write_text, csv_text

# Text report kept in the metrics dict for `write_metrics`; not written into metrics.json.
REPORT_KEY = "classification_report"


def _as_float(value) -> float | None:
    """Python float, or None for NaN / None (JSON has no NaN)."""
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def _check_inputs(y_true: np.ndarray, y_prob: np.ndarray, class_names: Sequence[str], multi_label: bool):
    if y_prob.ndim != 2:
        raise ValueError(f"y_prob must be 2-D (samples, classes), got shape {y_prob.shape}")
    n, c = y_prob.shape
    if len(class_names) != c:
        raise ValueError(f"{len(class_names)} class names for {c} probability columns")
    if n == 0:
        raise ValueError("no samples to evaluate")
    expected = (n, c) if multi_label else (n,)
    if y_true.shape != expected:
        raise ValueError(f"y_true has shape {y_true.shape}, expected {expected}")
    if not np.all(np.isfinite(y_prob)):
        raise ValueError("y_prob contains NaN or infinite values")
    if multi_label:
        if not np.isin(y_true, (0, 1)).all():
            raise ValueError("multi-label y_true must be 0/1")
    elif y_true.min() < 0 or y_true.max() >= c:
        raise ValueError(f"y_true holds class indices outside 0..{c - 1}")


def binary_auc(y_true_binary, scores) -> float | None:
    """ROC AUC of one class against the rest; None when only one of the two outcomes occurs."""
    y = np.asarray(y_true_binary).astype(int)
    if y.min() == y.max():
        return None
    return _as_float(roc_auc_score(y, np.asarray(scores, dtype=float)))


def _mean_or_none(values: list[float | None]) -> float | None:
    return None if any(v is None for v in values) else float(np.mean(values))


def classification_metrics(y_true, y_prob, class_names: Sequence[str]) -> dict:
    """Metrics of a single-label classifier from integer labels (N,) and probabilities (N, C).

    The prediction is the arg-max class. Keys: ``accuracy``, ``per_class`` (name ->
    precision / recall / f1 / support / roc_auc), ``macro`` and ``weighted`` (precision / recall /
    f1), ``roc_auc_ovr_macro`` (mean of the one-vs-rest AUCs; None when a class is absent),
    ``confusion_matrix`` (rows = true class, columns = predicted), ``num_samples``,
    ``class_names`` and the scikit-learn text report under ``classification_report``.
    """
    y_true = np.asarray(y_true).astype(int).reshape(-1)
    y_prob = np.asarray(y_prob, dtype=float)
    class_names = [str(c) for c in class_names]
    _check_inputs(y_true, y_prob, class_names, multi_label=False)
    labels = list(range(len(class_names)))
    y_pred = y_prob.argmax(axis=1)

    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    aucs = [binary_auc(y_true == k, y_prob[:, k]) for k in labels]
    per_class = {
        name: {
            "precision": float(precision[k]),
            "recall": float(recall[k]),
            "f1": float(f1[k]),
            "support": int(support[k]),
            "roc_auc": aucs[k],
        }
        for k, name in enumerate(class_names)
    }
    averages = {}
    for average in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(
            y_true, y_pred, labels=labels, average=average, zero_division=0
        )
        averages[average] = {"precision": float(p), "recall": float(r), "f1": float(f)}
    report = classification_report(
        y_true, y_pred, labels=labels, target_names=class_names, digits=4, zero_division=0
    )
    return {
        "task": "single_label",
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "per_class": per_class,
        "macro": averages["macro"],
        "weighted": averages["weighted"],
        "roc_auc_ovr_macro": _mean_or_none(aucs),
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "num_samples": int(len(y_true)),
        "class_names": class_names,
        REPORT_KEY: report,
    }


def multilabel_metrics(
    y_true, y_prob, class_names: Sequence[str], threshold: float | Sequence[float] = 0.5
) -> dict:
    """Metrics of a multi-label classifier from multi-hot labels (N, C) and probabilities (N, C).

    A class is predicted present when its probability is >= ``threshold`` (one number, or one per
    class, e.g. chosen on validation by ``toolkit.evaluation.thresholds``). Keys: ``accuracy``
    (exact-match / subset accuracy), ``per_class`` (precision / recall / f1 / support / roc_auc at
    the threshold), ``macro`` (precision / recall / f1), ``roc_auc_macro`` (None when a class has
    only one outcome), ``confusion_matrix`` (per class ``[[tn, fp], [fn, tp]]``), ``threshold``,
    ``num_samples``, ``class_names`` and the text report under ``classification_report``.
    """
    y_true = np.asarray(y_true).astype(int)
    y_prob = np.asarray(y_prob, dtype=float)
    class_names = [str(c) for c in class_names]
    _check_inputs(y_true, y_prob, class_names, multi_label=True)
    y_pred = (y_prob >= threshold).astype(int)

    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, zero_division=0)
    aucs = [binary_auc(y_true[:, k], y_prob[:, k]) for k in range(len(class_names))]
    per_class = {
        name: {
            "precision": float(precision[k]),
            "recall": float(recall[k]),
            "f1": float(f1[k]),
            "support": int(support[k]),
            "roc_auc": aucs[k],
        }
        for k, name in enumerate(class_names)
    }
    p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, average="macro", zero_division=0)
    report = classification_report(y_true, y_pred, target_names=class_names, digits=4, zero_division=0)
    return {
        "task": "multi_label",
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "per_class": per_class,
        "macro": {"precision": float(p), "recall": float(r), "f1": float(f)},
        "roc_auc_macro": _mean_or_none(aucs),
        "confusion_matrix": multilabel_confusion_matrix(y_true, y_pred).tolist(),
        "threshold": float(threshold) if np.ndim(threshold) == 0 else [float(t) for t in threshold],
        "num_samples": int(len(y_true)),
        "class_names": class_names,
        REPORT_KEY: report,
    }


def _per_class_rows(metrics: dict) -> list[list]:
    fields = ["precision", "recall", "f1", "support", "roc_auc"]
    intervals = metrics.get("confidence_intervals", {}).get("per_class", {})
    header = ["class", *fields]
    if intervals:
        header += [f"{f}_ci_{end}" for f in fields if f != "support" for end in ("low", "high")]
    rows = [header]
    for name, values in metrics["per_class"].items():
        row = [name] + ["" if values.get(f) is None else values.get(f) for f in fields]
        if intervals:
            for f in fields:
                if f == "support":
                    continue
                ci = intervals.get(name, {}).get(f) or {}
                row += ["" if ci.get(end) is None else ci.get(end) for end in ("low", "high")]
        rows.append(row)
    return rows


def _confusion_rows(metrics: dict) -> list[list]:
    names = metrics["class_names"]
    matrix = metrics["confusion_matrix"]
    if metrics.get("task") == "multi_label":
        rows = [["class", "tn", "fp", "fn", "tp"]]
        rows += [[name, *np.asarray(m).ravel().tolist()] for name, m in zip(names, matrix, strict=True)]
        return rows
    rows = [["true\\pred", *names]]
    rows += [[name, *row] for name, row in zip(names, matrix, strict=True)]
    return rows


def write_metrics(metrics: dict, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write a metrics dict to ``out_dir``; returns ``{"metrics", "per_class", "confusion_matrix",
    "classification_report"}`` -> path. Each file is written atomically."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    serialisable = {k: v for k, v in metrics.items() if k != REPORT_KEY}
    paths = {
        "metrics": atomic_write_json(out_dir / "metrics.json", serialisable, indent=2),
        "per_class": atomic_write_text(out_dir / "per_class.csv", csv_text(_per_class_rows(metrics))),
        "confusion_matrix": atomic_write_text(
            out_dir / "confusion_matrix.csv", csv_text(_confusion_rows(metrics))
        ),
    }
    paths["classification_report"] = atomic_write_text(
        out_dir / "classification_report.txt", metrics.get(REPORT_KEY) or ""
    )
    return paths
