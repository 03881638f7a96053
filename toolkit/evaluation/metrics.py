"""Classification metrics (scikit-learn) and the files an evaluation writes.

``classification_metrics`` and ``multilabel_metrics`` return plain, JSON-ready dicts (floats,
ints, lists; ``None`` where a value is undefined, e.g. the ROC AUC of a class absent from the
set). Each metric in them is a function registered with :func:`register_metric`, so a metric of
your own (``docs/extending.md``) reaches every evaluation's ``metrics.json`` and report. ``write_metrics`` writes them as ``metrics.json``, ``per_class.csv``,
``confusion_matrix.csv`` and ``classification_report.txt``, each atomically.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    classification_report,
    confusion_matrix,
    multilabel_confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
)

from toolkit.data.plugins import load_plugins
from toolkit.io import atomic_write_json, atomic_write_text, csv_text

# Text report kept in the metrics dict for `write_metrics`; not written into metrics.json.
REPORT_KEY = "classification_report"
# Keys every metrics dict has besides its metrics (no metric may take these names).
RESERVED_KEYS = (
    "task",
    "threshold",
    "num_samples",
    "class_names",
    REPORT_KEY,
    "confidence_intervals",
    "bootstrap",
)


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


# ---------------------------------------------------------------------------------------------
# The registry: each entry of an evaluation's metrics is one registered function


TASKS = ("single_label", "multi_label")


@dataclass
class Scored:
    """What a metric function sees: ``y_true`` (class indices (N,), or multi-hot (N, C)), ``y_prob``
    (N, C), ``y_pred`` (arg-max indices, or 0/1 at the threshold), ``class_names`` and
    ``multi_label``. ``labels`` is what scikit-learn's ``labels=`` takes (the class indices, None
    for multi-label); ``aucs`` (per class, None where undefined) is computed once for all."""

    y_true: np.ndarray
    y_prob: np.ndarray
    y_pred: np.ndarray
    class_names: list[str]
    multi_label: bool

    @property
    def labels(self) -> list[int] | None:
        return None if self.multi_label else list(range(len(self.class_names)))

    @cached_property
    def aucs(self) -> list[float | None]:
        truth = [
            self.y_true[:, k] if self.multi_label else self.y_true == k for k in range(len(self.class_names))
        ]
        return [binary_auc(t, self.y_prob[:, k]) for k, t in enumerate(truth)]


MetricFunction = Callable[[Scored], Any]
_METRICS: dict[str, dict[str, MetricFunction]] = {task: {} for task in TASKS}


def register_metric(name: str, tasks: Sequence[str] = TASKS) -> Callable[[MetricFunction], MetricFunction]:
    """Decorator: ``classification_metrics`` / ``multilabel_metrics`` (so every evaluation's
    ``metrics.json``, ``cit report`` and ``cit compare``) give ``fn(scored)`` under ``name``, after the
    metrics registered before it. ``fn`` returns a JSON-ready value (a float; None where undefined).
    ``tasks``: ``single_label``, ``multi_label`` or both (default)."""
    unknown = set(tasks) - set(TASKS)
    if unknown:
        raise ValueError(
            f"register_metric({name!r}): unknown task(s) {sorted(unknown)}; known: {list(TASKS)}"
        )

    def add(fn: MetricFunction) -> MetricFunction:
        if name in RESERVED_KEYS:
            raise ValueError(f"register_metric: {name!r} is a key of every metrics dict, not a metric name")
        for task in tasks:
            _METRICS[task][name] = fn
        return fn

    return add


def registered_metrics(task: str) -> dict[str, MetricFunction]:
    """Name -> function of the metrics of ``task``, in registration order (after importing the modules
    ``CIT_PLUGINS`` names: :mod:`toolkit.data.plugins`)."""
    load_plugins()
    return dict(_METRICS[task])


@register_metric("accuracy")
def accuracy(s: Scored) -> float:
    """Share of images whose prediction is right (multi-label: every class right, exact match)."""
    return float(accuracy_score(s.y_true, s.y_pred))


@register_metric("per_class")
def per_class(s: Scored) -> dict:
    precision, recall, f1, support = precision_recall_fscore_support(
        s.y_true, s.y_pred, labels=s.labels, zero_division=0
    )
    return {
        name: {
            "precision": float(precision[k]),
            "recall": float(recall[k]),
            "f1": float(f1[k]),
            "support": int(support[k]),
            "roc_auc": s.aucs[k],
        }
        for k, name in enumerate(s.class_names)
    }


def _averaged(s: Scored, average: str) -> dict:
    p, r, f, _ = precision_recall_fscore_support(
        s.y_true, s.y_pred, labels=s.labels, average=average, zero_division=0
    )
    return {"precision": float(p), "recall": float(r), "f1": float(f)}


@register_metric("macro")
def macro(s: Scored) -> dict:
    return _averaged(s, "macro")


@register_metric("weighted", tasks=["single_label"])
def weighted(s: Scored) -> dict:
    return _averaged(s, "weighted")


@register_metric("roc_auc_ovr_macro", tasks=["single_label"])
@register_metric("roc_auc_macro", tasks=["multi_label"])
def roc_auc_mean(s: Scored) -> float | None:
    """Mean of the per-class (one-vs-rest) ROC AUCs; None when a class has only one outcome."""
    return _mean_or_none(s.aucs)


@register_metric("confusion_matrix")
def confusion(s: Scored) -> list:
    """Rows = true class, columns = predicted; multi-label: per class ``[[tn, fp], [fn, tp]]``."""
    if s.multi_label:
        return multilabel_confusion_matrix(s.y_true, s.y_pred).tolist()
    return confusion_matrix(s.y_true, s.y_pred, labels=s.labels).tolist()


BUILT_IN_METRICS = {task: tuple(_METRICS[task]) for task in TASKS}


def plugin_metrics(metrics: dict) -> dict:
    """The entries of a metrics dict that metrics registered beyond the built-in ones gave."""
    task = metrics.get("task")
    if task not in TASKS:
        return {}
    return {k: v for k, v in metrics.items() if k in _METRICS[task] and k not in BUILT_IN_METRICS[task]}


def _scored_metrics(s: Scored) -> dict:
    task = TASKS[s.multi_label]
    return {"task": task, **{name: fn(s) for name, fn in registered_metrics(task).items()}}


def classification_metrics(y_true, y_prob, class_names: Sequence[str]) -> dict:
    """Metrics of a single-label classifier from integer labels (N,) and probabilities (N, C).

    The prediction is the arg-max class. Keys: ``task``, then the registered metrics:
    ``accuracy``, ``per_class`` (name -> precision / recall / f1 / support / roc_auc), ``macro``
    and ``weighted`` (precision / recall / f1), ``roc_auc_ovr_macro`` (mean of the one-vs-rest
    AUCs; None when a class is absent), ``confusion_matrix`` (rows = true class, columns =
    predicted) and any metric registered since; then ``num_samples``, ``class_names`` and the
    scikit-learn text report under ``classification_report``.
    """
    y_true = np.asarray(y_true).astype(int).reshape(-1)
    y_prob = np.asarray(y_prob, dtype=float)
    class_names = [str(c) for c in class_names]
    _check_inputs(y_true, y_prob, class_names, multi_label=False)
    scored = Scored(y_true, y_prob, y_prob.argmax(axis=1), class_names, multi_label=False)
    report = classification_report(
        y_true, scored.y_pred, labels=scored.labels, target_names=class_names, digits=4, zero_division=0
    )
    return {
        **_scored_metrics(scored),
        "num_samples": int(len(y_true)),
        "class_names": class_names,
        REPORT_KEY: report,
    }


def multilabel_metrics(
    y_true, y_prob, class_names: Sequence[str], threshold: float | Sequence[float] = 0.5
) -> dict:
    """Metrics of a multi-label classifier from multi-hot labels (N, C) and probabilities (N, C).

    A class is predicted present when its probability is >= ``threshold`` (one number, or one per
    class, e.g. chosen on validation by ``toolkit.evaluation.thresholds``). Keys: ``task``, then the
    registered metrics: ``accuracy`` (exact-match / subset accuracy), ``per_class`` (precision /
    recall / f1 / support / roc_auc at the threshold), ``macro`` (precision / recall / f1),
    ``roc_auc_macro`` (None when a class has only one outcome), ``confusion_matrix`` (per class
    ``[[tn, fp], [fn, tp]]``) and any metric registered since; then ``threshold``, ``num_samples``,
    ``class_names`` and the text report under ``classification_report``.
    """
    y_true = np.asarray(y_true).astype(int)
    y_prob = np.asarray(y_prob, dtype=float)
    class_names = [str(c) for c in class_names]
    _check_inputs(y_true, y_prob, class_names, multi_label=True)
    scored = Scored(y_true, y_prob, (y_prob >= threshold).astype(int), class_names, multi_label=True)
    report = classification_report(y_true, scored.y_pred, target_names=class_names, digits=4, zero_division=0)
    return {
        **_scored_metrics(scored),
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
