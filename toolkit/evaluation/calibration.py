"""Calibration: expected calibration error, reliability diagrams and temperature scaling.

Temperature scaling (Guo et al., 2017) divides the logits by one scalar T > 0 fitted on the
validation set by minimising the negative log-likelihood; it never changes the arg-max class, so
accuracy is untouched while over-confident probabilities soften. The fitted T is saved as
``models/temperature.json`` (``{"temperature": T}``) beside the bundle's ``model.pt``; inference
scales logits with ``load_temperature`` (1.0 when no file exists).

Single-label inputs are logits / probabilities of shape (N, C) with integer labels (N,);
multi-label inputs are (N, C) with multi-hot labels (N, C), calibrated per label with sigmoids.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import expit, log_expit, log_softmax, softmax

from toolkit.io import atomic_write_json

TEMPERATURE_FILE = "temperature.json"
# Search range of T; beyond it a model is so mis-calibrated that a scalar fix hides a real problem.
T_MIN, T_MAX = 0.05, 20.0
_EPS = 1e-12


def load_temperature(path: str | os.PathLike | None) -> float:
    """Temperature stored at ``path`` (``{"temperature": T}``); 1.0 when the file does not exist.

    Raises ``ValueError`` naming the file when it exists but is not valid JSON or T is not a
    positive finite number.
    """
    if path is None or not Path(path).is_file():
        return 1.0
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable temperature JSON file ({e})") from e
    value = data.get("temperature") if isinstance(data, dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f'{path}: expected {{"temperature": <positive number>}}, got {data!r}')
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{path}: temperature must be a positive finite number, got {value}")
    return float(value)


def save_temperature(temperature: float, path: str | os.PathLike, **extra) -> Path:
    """Write ``{"temperature": T, **extra}`` to ``path`` atomically (e.g. bundle/models/temperature.json)."""
    temperature = float(temperature)
    if not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be a positive finite number, got {temperature}")
    return atomic_write_json(path, {"temperature": temperature, **extra}, indent=2)


def _is_multi_label(logits: np.ndarray, labels: np.ndarray) -> bool:
    return labels.ndim == 2 and labels.shape == logits.shape


def logits_from_probabilities(probabilities, multi_label: bool = False) -> np.ndarray:
    """Logits equivalent to stored probabilities: log(p) for softmax outputs (equal to the true
    logits up to a per-row constant, which softmax ignores), log(p / (1 - p)) for sigmoid outputs."""
    p = np.clip(np.asarray(probabilities, dtype=float), _EPS, 1 - _EPS)
    return np.log(p / (1 - p)) if multi_label else np.log(p)


def negative_log_likelihood(logits, labels, temperature: float = 1.0) -> float:
    """Mean NLL of ``logits / temperature`` (softmax cross-entropy, or per-label binary cross-entropy)."""
    logits = np.asarray(logits, dtype=float) / temperature
    labels = np.asarray(labels)
    if _is_multi_label(logits, labels):
        y = labels.astype(float)
        return float(-np.mean(y * log_expit(logits) + (1 - y) * log_expit(-logits)))
    log_p = log_softmax(logits, axis=1)
    return float(-np.mean(log_p[np.arange(len(labels)), labels.astype(int)]))


def fit_temperature(logits, labels) -> float:
    """Temperature minimising the validation NLL of ``logits / T`` (bounded search over log T).

    ``logits`` (N, C); ``labels`` integer class indices (N,) or multi-hot (N, C).
    """
    logits = np.asarray(logits, dtype=float)
    labels = np.asarray(labels)
    if logits.ndim != 2 or len(logits) == 0:
        raise ValueError(f"logits must be a non-empty (samples, classes) array, got shape {logits.shape}")
    if len(labels) != len(logits):
        raise ValueError(f"{len(labels)} labels for {len(logits)} rows of logits")
    if not np.all(np.isfinite(logits)):
        raise ValueError("logits contain NaN or infinite values")
    # One-dimensional convex-in-practice problem: a bounded Brent search is exact enough and
    # needs no autograd.
    result = minimize_scalar(
        lambda log_t: negative_log_likelihood(logits, labels, math.exp(log_t)),
        bounds=(math.log(T_MIN), math.log(T_MAX)),
        method="bounded",
        options={"xatol": 1e-5},
    )
    return float(math.exp(result.x))


def apply_temperature(logits, temperature: float, multi_label: bool = False) -> np.ndarray:
    """Probabilities from ``logits / temperature`` (softmax, or sigmoid for multi-label)."""
    scaled = np.asarray(logits, dtype=float) / temperature
    return expit(scaled) if multi_label else softmax(scaled, axis=1)


def _confidences_and_outcomes(y_true, y_prob) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (predicted probability, whether it came true) to bin.

    Single-label: top-class confidence vs. correctness. Multi-label (y_true (N, C)) or binary
    scores (y_prob (N,)): every probability vs. its 0/1 outcome.
    """
    y_true = np.asarray(y_true)
    y_prob = np.asarray(y_prob, dtype=float)
    if y_prob.ndim == 1 or y_true.shape == y_prob.shape:
        return y_prob.ravel(), y_true.astype(float).ravel()
    if y_prob.ndim != 2 or y_true.shape != (len(y_prob),):
        raise ValueError(f"labels of shape {y_true.shape} do not fit probabilities of shape {y_prob.shape}")
    confidence = y_prob.max(axis=1)
    correct = (y_prob.argmax(axis=1) == y_true.astype(int)).astype(float)
    return confidence, correct


def reliability_diagram(y_true, y_prob, n_bins: int = 15) -> dict:
    """Equal-width confidence bins: ``bin_edges``, per-bin ``confidence`` (mean predicted),
    ``accuracy`` (observed frequency; None for empty bins), ``count``, and the ``ece``."""
    confidence, outcome = _confidences_and_outcomes(y_true, y_prob)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # right-closed bins, with confidence 0 falling into the first one
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    count = np.bincount(index, minlength=n_bins)
    conf_sum = np.bincount(index, weights=confidence, minlength=n_bins)
    outcome_sum = np.bincount(index, weights=outcome, minlength=n_bins)
    filled = count > 0
    mean_conf = np.where(filled, conf_sum / np.maximum(count, 1), np.nan)
    mean_acc = np.where(filled, outcome_sum / np.maximum(count, 1), np.nan)
    ece = float(np.sum(np.abs(mean_acc - mean_conf)[filled] * count[filled]) / max(len(confidence), 1))
    return {
        "bin_edges": edges.tolist(),
        "confidence": [None if math.isnan(v) else float(v) for v in mean_conf],
        "accuracy": [None if math.isnan(v) else float(v) for v in mean_acc],
        "count": count.astype(int).tolist(),
        "ece": ece,
    }


def expected_calibration_error(y_true, y_prob, n_bins: int = 15) -> float:
    """ECE with ``n_bins`` equal-width bins: sum over bins of |accuracy - confidence| x bin share."""
    return reliability_diagram(y_true, y_prob, n_bins)["ece"]
