"""The evaluation report: one self-contained HTML page (figures embedded as base64 PNG) plus the
PNG files, the metrics with bootstrap confidence intervals, calibration and operating points.

Inputs are the files a bundle run writes (docs/architecture.md): ``<output_dir>/eval/
predictions.csv`` (test set), optionally validation predictions (``evaluating`` run with
``--eval_split validation --eval_dir <output_dir>/eval_validation``) for temperature scaling and
operating points, ``<output_dir>/train/training_history.csv`` for the learning curves, and, for
Grad-CAM overlays, the trained model as an :class:`~toolkit.evaluation.gradcam.ExplainableModel`
handed over by the caller (`cit report --bundle` loads it from the bundle). The figures are drawn
by :mod:`toolkit.evaluation.figures`; this module computes what they show and assembles the page.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from string import Template

import numpy as np
import torch

from toolkit.evaluation import bootstrap, calibration, thresholds
from toolkit.evaluation.figures import (
    label_text,
    plot_confusion_matrix,
    plot_gradcam,
    plot_reliability,
    plot_roc_pr,
    plot_sample_grid,
    plot_training_history,
)
from toolkit.evaluation.gradcam import ExplainableModel, Explainer
from toolkit.evaluation.metrics import (
    classification_metrics,
    multilabel_metrics,
    plugin_metrics,
    write_metrics,
)
from toolkit.evaluation.operating_points import operating_points
from toolkit.io import atomic_write_json, atomic_write_text
from toolkit.transforms.readers import find_read_error

logger = logging.getLogger(__name__)

TEMPLATE = Path(__file__).with_name("templates") / "report.html"


# ---------------------------------------------------------------------------------------------
# Inputs


@dataclass
class Predictions:
    """Rows of a ``predictions.csv`` with labels."""

    path: Path
    images: list[str]
    patient_ids: list[str]
    y_true: np.ndarray  # (N,) class index, or (N, C) multi-hot
    probs: np.ndarray  # (N, C)
    class_names: list[str]
    multi_label: bool

    @property
    def groups(self) -> list[str] | None:
        """Patient ids for patient-level resampling, or None when the file has none."""
        return self.patient_ids if any(p.strip() for p in self.patient_ids) else None

    @property
    def y_pred(self) -> np.ndarray:
        return (self.probs >= 0.5).astype(int) if self.multi_label else self.probs.argmax(axis=1)


def read_predictions(path: str | os.PathLike) -> Predictions:
    """Read ``predictions.csv`` (image, patient_id, label, label_name, pred, pred_name, prob_<class>...).
    Multi-hot labels are written as ``0|1|0``. Raises ``ValueError`` naming the file and row."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            columns = reader.fieldnames or []
            rows = list(reader)
    except FileNotFoundError:
        raise FileNotFoundError(f"predictions not found: {path}") from None
    prob_columns = [c for c in columns if c.startswith("prob_")]
    missing = [c for c in ("image", "label") if c not in columns]
    if missing or not prob_columns:
        raise ValueError(f"{path}: needs columns image, label and prob_<class>...; has {columns}")
    if not rows:
        raise ValueError(f"{path}: no predictions")
    class_names = [c[len("prob_") :] for c in prob_columns]
    multi = any("|" in r["label"] for r in rows) or (len(class_names) == 1)
    y_true, probs = [], []
    for n, row in enumerate(rows, start=2):
        try:
            label = [int(v) for v in row["label"].split("|")] if multi else int(row["label"])
            probs.append([float(row[c]) for c in prob_columns])
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path}, line {n}: unreadable label or probability ({e})") from e
        y_true.append(label)
    return Predictions(
        path=path,
        images=[r["image"] for r in rows],
        patient_ids=[r.get("patient_id") or "" for r in rows],
        y_true=np.asarray(y_true, dtype=int),
        probs=np.asarray(probs, dtype=float),
        class_names=class_names,
        multi_label=multi,
    )


# ---------------------------------------------------------------------------------------------
# Grad-CAM panels


def _why(exc: BaseException) -> str:
    """One line on why an image could not be explained: the reader's reason when there is one (MONAI's
    ``Compose`` wraps it in ``RuntimeError("applying transform ...")``), else the exception itself."""
    read_error = find_read_error(exc)
    if read_error is not None:
        return read_error.reason
    while isinstance(exc, RuntimeError) and exc.__cause__ is not None and "applying transform" in str(exc):
        exc = exc.__cause__
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:300]


def gradcam_panels(
    model: ExplainableModel, pred: Predictions, indices: Sequence[int], method: str
) -> tuple[list[dict], str, list[str]]:
    """Grad-CAM heat maps of the predicted class for the given prediction rows, through the model's
    own preprocessing and network. Returns the panels (for ``figures.plot_gradcam``), the target
    layer, and one line (file: reason) per image that could not be explained. Raises ``ValueError``
    when the model does not fit the predictions or none of the images could be explained."""
    if list(model.class_names) != pred.class_names:
        raise ValueError(
            f"the model's classes {list(model.class_names)} differ from the predictions' {pred.class_names}"
        )
    explainer = Explainer(model.network, method=method)
    panels, skipped = [], []
    for i in indices:
        top = int(pred.probs[i].argmax())  # the predicted class (multi-label: the most probable one)
        try:
            image = torch.as_tensor(model.preprocessing({"image": pred.images[i]})["image"])
            shown, heatmap = explainer.explain(image, class_idx=top)
        except (OSError, ValueError, RuntimeError) as e:  # a moved or corrupt file: leave it out, say why
            logger.debug("Grad-CAM of %s failed", pred.images[i], exc_info=True)
            skipped.append(f"Grad-CAM skips {pred.images[i]}: {_why(e)}")
            continue
        true, guess = pred.y_true[i], pred.y_pred[i]
        panels.append(
            {
                "image": shown,
                "heatmap": heatmap,
                "true": label_text(true, pred.class_names),
                "pred": label_text(guess, pred.class_names),
                "prob": float(pred.probs[i, top]),
                "right": bool(np.array_equal(true, guess)),
                "file": pred.images[i],
            }
        )
    if indices and not panels:
        raise ValueError(f"none of the {len(indices)} chosen images could be explained; first: {skipped[0]}")
    return panels, explainer.target_layer, skipped


# ---------------------------------------------------------------------------------------------
# HTML


def _fmt(value, digits: int = 3) -> str:
    return (
        "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"
    )


def _with_ci(value, ci: dict | None) -> str:
    text = html.escape(_fmt(value))
    if ci and ci.get("low") is not None:
        text += f' <span class="ci">({_fmt(ci["low"])}&ndash;{_fmt(ci["high"])})</span>'
    return text


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _figure(path: Path, caption: str, wide: bool = False) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    cls = ' class="wide"' if wide else ""
    return (
        f'<figure{cls}><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def _section(title: str, body: str) -> str:
    return f"<section><h2>{html.escape(title)}</h2>{body}</section>"


def _metrics_html(m: dict) -> str:
    ci = m.get("confidence_intervals", {})
    b = m.get("bootstrap", {})
    auc_key = "roc_auc_macro" if m["task"] == "multi_label" else "roc_auc_ovr_macro"
    rows = [
        [
            "Accuracy" + (" (exact match)" if m["task"] == "multi_label" else ""),
            _with_ci(m["accuracy"], ci.get("accuracy")),
        ],
        ["ROC AUC, macro one-vs-rest", _with_ci(m.get(auc_key), ci.get(auc_key))],
    ]
    for avg in ("macro", "weighted"):
        if avg in m:
            for key in ("precision", "recall", "f1"):
                rows.append(
                    [
                        f"{key.capitalize() if key != 'f1' else 'F1'}, {avg} average",
                        _with_ci(m[avg][key], ci.get(avg, {}).get(key)),
                    ]
                )
    for name, value in plugin_metrics(m).items():  # registered beyond the built-in ones (no interval)
        if value is None or isinstance(value, (int, float)):
            rows.append([html.escape(name), _with_ci(value, None)])
    summary = _table(["metric", "value (95% CI)"], rows)
    per_class_rows = []
    for name, values in m["per_class"].items():
        cci = ci.get("per_class", {}).get(name, {})
        per_class_rows.append(
            [html.escape(name), str(values["support"])]
            + [_with_ci(values[k], cci.get(k)) for k in ("precision", "recall", "f1", "roc_auc")]
        )
    per_class = _table(
        ["class", "support", "precision (PPV)", "recall (sensitivity)", "F1", "ROC AUC"], per_class_rows
    )
    note = (
        f'<p class="note">{m["num_samples"]} test images. 95% confidence intervals: percentile bootstrap, '
        f"{b.get('n_resamples', '?')} resamples of {b.get('num_units', '?')} {b.get('unit', 'image')}s "
        f"(seed {b.get('seed', '?')})."
        + (
            " Resampling whole patients keeps correlated images of one patient together."
            if b.get("unit") == "patient"
            else " No patient ids: images were resampled independently, which is optimistic if a patient has several images."
        )
        + "</p>"
    )
    if m["task"] == "multi_label":
        at = (
            "the per-class thresholds chosen on validation"
            if isinstance(m["threshold"], list)
            else m["threshold"]
        )
        note += f'<p class="note">Per-class figures use the threshold {at}.</p>'
    return summary + per_class + note


def _calibration_html(cal: dict) -> str:
    ci = cal.get("intervals", {})
    rows = [["ECE on test, as evaluated", _with_ci(cal["ece_before"], ci.get("ece_before"))]]
    if cal.get("temperature") is not None:
        rows += [
            ["Temperature T (fitted on validation)", _fmt(cal["temperature"])],
            ["ECE on test after temperature scaling", _with_ci(cal["ece_after"], ci.get("ece_after"))],
        ]
    text = _table(["", "value (95% CI)"], rows)
    text += (
        f'<p class="note">Expected calibration error with {cal["n_bins"]} equal-width bins of '
        f"{html.escape(cal['confidence'])}. "
    )
    if cal.get("temperature") is None:
        text += "No validation predictions were given, so no temperature was fitted. "
    else:
        text += (
            "Temperature scaling divides the logits by T; it does not change the predicted class of a "
            "single-label model. "
        )
    if cal.get("saved_to"):
        text += f"Saved as <code>{html.escape(cal['saved_to'])}</code> (T = {_fmt(cal['saved_temperature'])}), used at inference."
    return text + "</p>"


def _operating_html(points: dict, target: float) -> str:
    rows = []
    for name, p in points.items():
        if "error" in p:
            rows.append([html.escape(name), "n/a", html.escape(p["error"]), "", "", ""])
            continue
        t, ci = p["test"], p["test_intervals"]
        rows.append(
            [
                html.escape(name),
                _fmt(p["validation"]["threshold"], 4),
                _fmt(p["validation"]["sensitivity"]),
                _with_ci(t["sensitivity"], ci.get("sensitivity")),
                _with_ci(t["specificity"], ci.get("specificity")),
                _with_ci(t["ppv"], ci.get("ppv")),
            ]
        )
    return (
        _table(
            [
                "class",
                "threshold",
                "validation sensitivity",
                "test sensitivity",
                "test specificity",
                "test PPV",
            ],
            rows,
        )
        + f'<p class="note">Threshold = the highest probability cut-off reaching sensitivity {target:.2f} on the '
        "validation set, then applied unchanged to the test set.</p>"
    )


def _audit_html(audit: dict, path: Path) -> str:
    leak = audit["leakage"]
    rows = [
        [
            html.escape(pair.replace("|", " / ")),
            str(c.get("shared_patients", 0)),
            str(c.get("exact_duplicate_pairs", 0)),
            str(c.get("near_duplicate_pairs", 0)),
        ]
        for pair, c in leak["counts_by_split_pair"].items()
    ]
    text = f"<p>Audit of the data set (<code>{html.escape(str(path))}</code>): "
    text += "<b>leakage found</b>.</p>" if leak["found"] else "no leakage found.</p>"
    if rows:
        text += _table(
            ["split pair", "shared patients", "exact duplicate pairs", "near-duplicate pairs"], rows
        )
    copies = leak.get("images_with_a_copy_in_another_split", {})
    if copies.get("test"):
        text += (
            f'<div class="warn">{copies["test"]} test images have an exact or near copy in another split; '
            "the test metrics above are optimistic.</div>"
        )
    return text


# ---------------------------------------------------------------------------------------------
# The report


def _calibrate(
    pred: Predictions,
    val: Predictions | None,
    temperature_file: Path | None,
    n_bins: int,
    n_resamples: int,
    seed: int,
) -> tuple[dict, dict]:
    """ECE (with bootstrap CI) of the test predictions, before and after a temperature fitted on
    ``val``; optionally saved to ``temperature_file``. Returns (summary, reliability diagrams)."""
    what = "predicted probability" if pred.multi_label else "top-class confidence"
    cal = {
        "n_bins": n_bins,
        "confidence": what,
        "ece_before": calibration.expected_calibration_error(pred.y_true, pred.probs, n_bins),
        "temperature": None,
    }
    diagrams = {"As evaluated": calibration.reliability_diagram(pred.y_true, pred.probs, n_bins)}
    scaled = None  # test probabilities after temperature scaling
    if val is not None:
        val_logits = calibration.logits_from_probabilities(val.probs, pred.multi_label)
        t = calibration.fit_temperature(val_logits, val.y_true)
        scaled = calibration.apply_temperature(
            calibration.logits_from_probabilities(pred.probs, pred.multi_label), t, pred.multi_label
        )
        diagrams[f"After temperature scaling (T={t:.2f})"] = calibration.reliability_diagram(
            pred.y_true, scaled, n_bins
        )
        cal.update(
            temperature=t,
            ece_after=calibration.expected_calibration_error(pred.y_true, scaled, n_bins),
            validation_predictions=str(val.path),
            validation_nll_before=calibration.negative_log_likelihood(val_logits, val.y_true),
            validation_nll_after=calibration.negative_log_likelihood(val_logits, val.y_true, t),
        )
        if temperature_file is not None:
            # the predictions were made with the temperature already saved there: compose the two
            combined = calibration.load_temperature(temperature_file) * t
            calibration.save_temperature(
                combined,
                temperature_file,
                fitted_on=str(val.path),
                ece_test_before=cal["ece_before"],
                ece_test_after=cal["ece_after"],
            )
            cal.update(saved_to=str(temperature_file), saved_temperature=combined)

    def ece_statistic(idx: np.ndarray) -> dict[tuple, float]:
        out = {
            ("ece_before",): calibration.expected_calibration_error(pred.y_true[idx], pred.probs[idx], n_bins)
        }
        if scaled is not None:
            out[("ece_after",)] = calibration.expected_calibration_error(
                pred.y_true[idx], scaled[idx], n_bins
            )
        return out

    ece_ci = bootstrap.bootstrap_intervals(ece_statistic, len(pred.images), pred.groups, n_resamples, seed)
    cal["intervals"] = {path[0]: ci for path, ci in ece_ci.items()}
    return cal, diagrams


def _default_validation(eval_dir: Path) -> Path | None:
    for candidate in (
        eval_dir.parent / "eval_validation" / "predictions.csv",
        eval_dir / "validation_predictions.csv",
    ):
        if candidate.is_file():
            return candidate
    return None


def build_report(
    eval_dir: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    validation_predictions: str | os.PathLike | None = None,
    history: str | os.PathLike | None = None,
    model: ExplainableModel | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
    target_sensitivity: float = 0.9,
    cam_method: str = "gradcam",
    n_grid: int = 16,
    n_cam: int = 4,
    n_bins: int = 15,
    temperature_file: str | os.PathLike | None = None,
    title: str | None = None,
    audit: str | os.PathLike | None = None,
    notes: Sequence[str] = (),
) -> dict:
    """Write ``report.html`` + PNGs + metrics (with CIs), ``calibration.json`` and
    ``operating_points.json`` to ``out_dir`` (default ``<eval_dir>/report``); returns a summary
    with the paths.

    ``model``: the network, preprocessing and class names for Grad-CAM overlays of ``n_cam`` right
    and ``n_cam`` wrong predictions (left out, with a warning, when None). ``temperature_file``: save
    the temperature fitted on the validation predictions there (e.g. ``<bundle>/models/temperature.json``),
    combined with the temperature already in it, which the predictions were made with.
    ``audit``: an ``audit.json`` of ``cit audit`` whose leakage findings are shown with the metrics.
    ``notes``: warnings of the caller to show at the top of the page (e.g. why there is no model).
    A figure that cannot be made is a warning on the page, not a failed report."""
    started = time.perf_counter()
    eval_dir = Path(eval_dir).resolve()
    out_dir = Path(out_dir).resolve() if out_dir else eval_dir / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    pred, val = _read_test_and_validation(eval_dir, validation_predictions, temperature_file)
    history_path = Path(history) if history else eval_dir.parent / "train" / "training_history.csv"
    rng = np.random.default_rng(seed)
    warnings: list[str] = list(notes)

    # multi-label: the per-class thresholds the evaluation used (chosen on validation), else 0.5
    threshold = thresholds.evaluation_threshold(eval_dir, pred.class_names) if pred.multi_label else 0.5
    metrics = _metrics_with_intervals(pred, threshold, n_resamples, seed)
    metric_files = write_metrics(metrics, out_dir)
    temperature_file = Path(temperature_file) if temperature_file is not None else None
    cal, reliability = _write_calibration(pred, val, temperature_file, n_bins, n_resamples, seed, out_dir)
    points = _write_operating_points(pred, val, target_sensitivity, n_resamples, seed, out_dir)

    figures = _plots(pred, metrics, threshold, history_path, out_dir, [reliability], warnings)
    figures += _sample_grid(pred, rng, n_grid, out_dir)
    figures += _gradcam_figure(pred, model, rng, n_cam, cam_method, out_dir, warnings)

    title = title or f"Evaluation report: {eval_dir.parent.name}"
    page = _page(pred, metrics, cal, points, target_sensitivity, figures, warnings, audit, title)
    html_path = atomic_write_text(out_dir / "report.html", page)
    return _write_summary(out_dir, html_path, figures, metric_files, cal, points, warnings, started)


def _write_summary(out_dir: Path, html_path, figures, metric_files, cal, points, warnings, started) -> dict:
    """``report.json``: the paths written, calibration, operating points, warnings and the time taken."""
    summary = {
        "html": str(html_path),
        "figures": [str(f[0]) for f in figures],
        "metrics": {k: str(v) for k, v in metric_files.items()},
        "calibration": dict(cal),
        "operating_points": points,
        "warnings": warnings,
        "elapsed_seconds": round(time.perf_counter() - started, 1),
    }
    atomic_write_json(out_dir / "report.json", summary)
    return summary


def _read_test_and_validation(eval_dir: Path, validation_predictions, temperature_file) -> tuple:
    """``(test, validation or None)`` predictions; the validation file's classes must be the test's,
    and a temperature to save needs validation predictions to fit it on."""
    pred = read_predictions(eval_dir / "predictions.csv")
    val_path = Path(validation_predictions) if validation_predictions else _default_validation(eval_dir)
    val = read_predictions(val_path) if val_path else None
    if val is not None and val.class_names != pred.class_names:
        raise ValueError(
            f"{val_path}: classes {val.class_names} differ from the test predictions' {pred.class_names}"
        )
    if temperature_file is not None and val is None:
        raise ValueError("saving a temperature needs validation predictions to fit it on")
    return pred, val


def _write_calibration(pred, val, temperature_file: Path | None, n_bins, n_resamples, seed, out_dir: Path):
    """``calibration.json`` and the reliability diagram (see ``_calibrate``); returns the calibration
    summary and the diagram's figure entry."""
    cal, diagrams = _calibrate(pred, val, temperature_file, n_bins, n_resamples, seed)
    what = "predicted probability" if pred.multi_label else "top-class confidence"
    atomic_write_json(out_dir / "calibration.json", {**cal, "reliability": diagrams})
    figure = (
        plot_reliability(diagrams, out_dir / "reliability.png", what),
        "Reliability diagram: observed frequency (blue) against mean confidence (red outline) per bin; "
        "calibrated bars meet the diagonal.",
        True,
    )
    return cal, figure


def _write_operating_points(pred, val, target_sensitivity, n_resamples, seed, out_dir: Path) -> dict | None:
    """``operating_points.json`` chosen on validation (binary and multi-label tasks), or None."""
    if val is None or not (pred.multi_label or len(pred.class_names) == 2):
        return None
    points = operating_points(
        val.y_true,
        val.probs,
        pred.y_true,
        pred.probs,
        pred.class_names,
        target_sensitivity,
        pred.multi_label,
        test_groups=pred.groups,
        n_resamples=n_resamples,
        seed=seed,
    )
    atomic_write_json(out_dir / "operating_points.json", points)
    return points


def _metrics_with_intervals(pred, threshold, n_resamples: int, seed: int) -> dict:
    """The test metrics (scikit-learn) with their bootstrap intervals (by patient where ids exist)."""
    if pred.multi_label:
        metrics = multilabel_metrics(pred.y_true, pred.probs, pred.class_names, threshold)
    else:
        metrics = classification_metrics(pred.y_true, pred.probs, pred.class_names)
    bootstrap.add_intervals(
        metrics,
        bootstrap.metric_intervals(
            pred.y_true,
            pred.probs,
            pred.class_names,
            groups=pred.groups,
            multi_label=pred.multi_label,
            threshold=threshold,
            n_resamples=n_resamples,
            seed=seed,
        ),
    )
    return metrics


def _plots(
    pred, metrics, threshold, history_path: Path, out_dir: Path, figures: list, warnings: list
) -> list:
    """The learning curves (first), then ``figures``, the confusion matrix, ROC and precision-recall curves."""
    figures = list(figures)
    if history_path.is_file():
        try:
            curves = plot_training_history(history_path, out_dir / "training_curves.png")
            figures.insert(0, (curves, "Loss and accuracy per epoch (training_history.csv).", True))
        except (ValueError, KeyError, OSError) as e:
            warnings.append(f"Cannot plot the training history {history_path}: {e}")
    else:
        warnings.append(f"No training history at {history_path}: learning curves are left out.")
    at = "the per-class thresholds chosen on validation" if np.ndim(threshold) else "the 0.5 threshold"
    caption = (
        f"Confusion matrix per class at {at}."
        if pred.multi_label
        else "Confusion matrix: counts, and normalised per true class (the diagonal is the recall)."
    )
    figures.append(
        (
            plot_confusion_matrix(
                metrics["confusion_matrix"], out_dir / "confusion_matrix.png", pred.class_names
            ),
            caption,
            True,
        )
    )
    roc, pr = plot_roc_pr(
        pred.y_true,
        pred.probs,
        pred.class_names,
        out_dir / "roc.png",
        out_dir / "precision_recall.png",
        multi_label=pred.multi_label,
    )
    figures += [
        (roc, "ROC curves, one class against the rest.", False),
        (pr, "Precision-recall curves; the baseline of each is its prevalence.", False),
    ]
    return figures


def _sample_grid(pred, rng, n_grid: int, out_dir: Path) -> list:
    if n_grid <= 0:
        return []
    grid = sorted(rng.choice(len(pred.images), size=min(n_grid, len(pred.images)), replace=False).tolist())
    samples = plot_sample_grid(
        [pred.images[i] for i in grid],
        pred.y_true[grid],
        pred.y_pred[grid],
        pred.class_names,
        out_dir / "samples.png",
    )
    return [
        (
            samples,
            f"{len(grid)} random test images; title green when the prediction is right, red when wrong.",
            True,
        )
    ]


def _gradcam_figure(pred, model, rng, n_cam: int, cam_method: str, out_dir: Path, warnings: list) -> list:
    """Heat maps of ``n_cam`` right and ``n_cam`` wrong predictions; a failure is a warning on the page."""
    if n_cam <= 0:
        return []
    if model is None:
        warnings.append("Grad-CAM overlays need the model (cit report --bundle).")
        return []
    right = [i for i in range(len(pred.images)) if np.array_equal(pred.y_true[i], pred.y_pred[i])]
    wrong = [i for i in range(len(pred.images)) if not np.array_equal(pred.y_true[i], pred.y_pred[i])]
    chosen = [
        int(i)
        for group in (right, wrong)
        if group
        for i in rng.choice(group, size=min(n_cam, len(group)), replace=False)
    ]
    try:
        panels, layer, skipped = gradcam_panels(model, pred, chosen, cam_method)
        warnings += skipped
        figure = plot_gradcam(panels, out_dir / "gradcam.png", cam_method, layer)
    except (OSError, ValueError, RuntimeError) as e:  # a report without heat maps beats no report; say why
        logger.debug("Grad-CAM failed", exc_info=True)
        warnings.append(f"Grad-CAM overlays could not be made: {type(e).__name__}: {e}")
        return []
    caption = (
        f"Heat maps for {sum(p['right'] for p in panels)} right and {sum(not p['right'] for p in panels)} "
        "wrong predictions: where the network looked."
    )
    return [(figure, caption, True)]


def _page(pred, metrics, cal, points, target_sensitivity, figures, warnings, audit, title: str) -> str:
    """The HTML page: warnings, metrics, the data audit, calibration, operating points, figures."""
    sections = []
    if warnings:
        sections.append("".join(f'<div class="warn">{html.escape(w)}</div>' for w in warnings))
    sections.append(_section("Metrics", _metrics_html(metrics)))
    if audit is not None:
        audit_report = json.loads(Path(audit).read_text(encoding="utf-8"))
        sections.append(_section("Data audit", _audit_html(audit_report, Path(audit))))
    sections.append(_section("Calibration", _calibration_html(cal)))
    if points is not None:
        sections.append(
            _section(
                f"Operating points (target sensitivity {target_sensitivity:.2f})",
                _operating_html(points, target_sensitivity),
            )
        )
    elif pred.multi_label or len(pred.class_names) == 2:
        sections.append(
            _section(
                "Operating points", '<p class="note">Need validation predictions to choose a threshold.</p>'
            )
        )
    sections.append(
        _section("Figures", '<div class="figures">' + "".join(_figure(*f) for f in figures) + "</div>")
    )
    report_text = html.escape(metrics.get("classification_report", ""))
    sections.append(_section("scikit-learn classification report", f"<pre>{report_text}</pre>"))
    subtitle = (
        f"<p>Predictions: {html.escape(str(pred.path))}</p>"
        f"<p>{metrics['num_samples']} test images, classes: {html.escape(', '.join(pred.class_names))}; "
        f"generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}</p>"
    )
    return Template(TEMPLATE.read_text(encoding="utf-8")).substitute(
        title=html.escape(title), subtitle=subtitle, sections="\n".join(sections)
    )
