"""The evaluation report: one self-contained HTML page (figures embedded as base64 PNG) plus the
PNG files, the metrics with bootstrap confidence intervals, calibration and operating points.

Inputs are the files a bundle run writes (docs/architecture.md): ``<output_dir>/eval/
predictions.csv`` (test set), optionally validation predictions (``evaluating`` run with
``--eval_split validation --eval_dir <output_dir>/eval_validation``) for temperature scaling and
operating points, ``<output_dir>/train/training_history.csv`` for the learning curves, and the
bundle itself for Grad-CAM overlays.
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
from dataclasses import dataclass
from pathlib import Path
from string import Template

import numpy as np

from toolkit.evaluation import bootstrap, calibration
from toolkit.evaluation.metrics import (
    classification_metrics,
    multilabel_metrics,
    write_metrics,
    write_text_atomic,
)
from toolkit.evaluation.operating_points import operating_points
from toolkit.evaluation.training_plots import plot_training_history

logger = logging.getLogger(__name__)

TEMPLATE = Path(__file__).with_name("templates") / "report.html"
GREEN, RED = "#1a7f37", "#c62828"


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
# Figures (matplotlib, Agg backend)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    _plt().close(fig)
    return path


def plot_confusion(matrix, class_names: list[str], path: Path) -> Path:
    """Confusion matrix as counts and row-normalised (recall per true class)."""
    plt = _plt()
    cm = np.asarray(matrix, dtype=float)
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    size = max(4.0, 0.6 * len(class_names) + 2.5)
    fig, axes = plt.subplots(1, 2, figsize=(2 * size + 1, size))
    for ax, data, title, fmt in (
        (axes[0], cm, "Counts", "{:.0f}"),
        (axes[1], norm, "Row-normalised", "{:.2f}"),
    ):
        im = ax.imshow(data, cmap="Blues", vmin=0, vmax=data.max() if data.max() > 0 else 1)
        ax.set_xticks(range(len(class_names)), class_names, rotation=40, ha="right")
        ax.set_yticks(range(len(class_names)), class_names)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(title)
        threshold = data.max() / 2 if data.max() > 0 else 0.5
        for i in range(len(class_names)):
            for j in range(len(class_names)):
                colour = "white" if data[i, j] > threshold else "black"
                ax.text(j, i, fmt.format(data[i, j]), ha="center", va="center", color=colour, fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    return _save(fig, path)


def plot_multilabel_confusion(matrices, class_names: list[str], path: Path) -> Path:
    """Per-class 2x2 confusion matrices ([[tn, fp], [fn, tp]]) of a multi-label task."""
    plt = _plt()
    n = len(class_names)
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 2.8 * rows), squeeze=False)
    for k, ax in enumerate(axes.ravel()):
        if k >= n:
            ax.axis("off")
            continue
        m = np.asarray(matrices[k], dtype=float)
        ax.imshow(m, cmap="Blues", vmin=0)
        for i in range(2):
            for j in range(2):
                ax.text(j, i, f"{m[i, j]:.0f}", ha="center", va="center",
                        color="white" if m[i, j] > m.max() / 2 else "black")  # fmt: skip
        ax.set_xticks([0, 1], ["pred 0", "pred 1"])
        ax.set_yticks([0, 1], ["true 0", "true 1"])
        ax.set_title(class_names[k], fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def _curve_targets(pred: Predictions) -> list[tuple[int, str, np.ndarray]]:
    if pred.multi_label:
        return [(k, n, pred.y_true[:, k]) for k, n in enumerate(pred.class_names)]
    if len(pred.class_names) == 2:
        return [(1, pred.class_names[1], (pred.y_true == 1).astype(int))]
    return [(k, n, (pred.y_true == k).astype(int)) for k, n in enumerate(pred.class_names)]


def plot_roc_pr(pred: Predictions, roc_path: Path, pr_path: Path) -> tuple[Path, Path]:
    """One-vs-rest ROC and precision-recall curves with AUC / average precision per class."""
    from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_curve

    plt = _plt()
    fig_roc, ax_roc = plt.subplots(figsize=(5.6, 5))
    fig_pr, ax_pr = plt.subplots(figsize=(5.6, 5))
    for k, name, truth in _curve_targets(pred):
        if truth.min() == truth.max():
            continue  # class absent (or everything): no curve
        fpr, tpr, _ = roc_curve(truth, pred.probs[:, k])
        ax_roc.plot(fpr, tpr, label=f"{name} (AUC {auc(fpr, tpr):.3f})")
        precision, recall, _ = precision_recall_curve(truth, pred.probs[:, k])
        ap = average_precision_score(truth, pred.probs[:, k])
        ax_pr.step(
            recall, precision, where="post", label=f"{name} (AP {ap:.3f}, prevalence {truth.mean():.2f})"
        )
    ax_roc.plot([0, 1], [0, 1], "--", color="grey", linewidth=1)
    ax_roc.set(xlabel="1 - specificity (false positive rate)", ylabel="sensitivity (true positive rate)",
               title="ROC, one vs rest", xlim=(0, 1), ylim=(0, 1.01))  # fmt: skip
    ax_pr.set(xlabel="recall (sensitivity)", ylabel="precision (PPV)", title="Precision-recall, one vs rest",
              xlim=(0, 1), ylim=(0, 1.01))  # fmt: skip
    for ax in (ax_roc, ax_pr):
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right" if ax is ax_roc else "lower left", fontsize=8)
    return _save(fig_roc, roc_path), _save(fig_pr, pr_path)


def plot_reliability(diagrams: dict[str, dict], path: Path, what: str) -> Path:
    """Reliability diagram(s): observed frequency against mean confidence per bin, with ECE."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(diagrams), figsize=(5 * len(diagrams), 4.6), squeeze=False)
    for ax, (title, d) in zip(axes[0], diagrams.items(), strict=True):
        edges = np.asarray(d["bin_edges"])
        centres = (edges[:-1] + edges[1:]) / 2
        width = edges[1] - edges[0]
        acc = np.array([np.nan if v is None else v for v in d["accuracy"]])
        conf = np.array([np.nan if v is None else v for v in d["confidence"]])
        filled = ~np.isnan(acc)  # empty bins draw nothing
        ax.bar(centres[filled], acc[filled], width=width * 0.95, color="#4a78b5", label="observed frequency")
        ax.bar(centres[filled], conf[filled], width=width * 0.95, fill=False, edgecolor="#c62828", linewidth=1.2,
               label="mean confidence")  # fmt: skip
        ax.plot([0, 1], [0, 1], "--", color="grey", linewidth=1, label="perfect calibration")
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel=f"{what} (mean per bin)", ylabel="observed frequency",
               title=f"{title}: ECE {d['ece']:.3f}")  # fmt: skip
        ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def _read_display(path: str) -> np.ndarray | None:
    """An image file as a displayable (H, W) / (H, W, 3) array in [0, 1], or None if unreadable."""
    from toolkit.evaluation.gradcam import display_plane
    from toolkit.transforms.readers import MedicalImageReader

    try:
        reader = MedicalImageReader(dicom_frame="middle", max_size=256)
        arr, meta = reader.get_data(reader.read(path))
    except Exception as e:  # a missing / corrupt file must not stop the report
        logger.warning("cannot show %s: %s", path, e)
        return None
    arr = np.asarray(arr, dtype=np.float64)
    if meta.get("original_channel_dim") == -1 and arr.ndim >= 3:
        arr = np.moveaxis(arr, -1, 0)  # (H, W, 3) -> (3, H, W)
    else:
        arr = arr[None]
    if arr.ndim == 3 and arr.shape[0] == 3:
        return display_plane(arr)
    if arr.ndim > 3:  # volume (1, x, y, z[, t])
        arr = arr[..., 0] if arr.ndim == 5 else arr
        return np.rot90(display_plane(arr))  # NIfTI (x, y): rotate to the usual view
    return display_plane(arr)


def _label_text(label, class_names: list[str]) -> str:
    if np.ndim(label):
        names = [class_names[k] for k, v in enumerate(label) if v]
        return ", ".join(names) or "none"
    return class_names[int(label)]


def plot_sample_grid(pred: Predictions, indices: list[int], path: Path, columns: int = 4) -> Path:
    """Test images titled true / predicted, green when right and red when wrong."""
    plt = _plt()
    rows = max(1, math.ceil(len(indices) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(3.1 * columns, 3.4 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, i in zip(axes.ravel(), indices, strict=False):
        image = _read_display(pred.images[i])
        if image is None:
            ax.text(0.5, 0.5, "unreadable", ha="center", va="center")
        else:
            ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=1)
        true, guess = pred.y_true[i], pred.y_pred[i]
        right = bool(np.array_equal(true, guess))
        ax.set_title(f"true: {_label_text(true, pred.class_names)}\npred: {_label_text(guess, pred.class_names)}",
                     color=GREEN if right else RED, fontsize=9)  # fmt: skip
    fig.tight_layout()
    return _save(fig, path)


def plot_gradcam(panels: list[dict], path: Path, method: str, layer: str) -> Path:
    """Image and heat-map overlay side by side for each explained prediction."""
    from toolkit.evaluation.gradcam import overlay

    plt = _plt()
    pairs_per_row = 2
    rows = max(1, math.ceil(len(panels) / pairs_per_row))
    fig, axes = plt.subplots(
        rows, 2 * pairs_per_row, figsize=(2.8 * 2 * pairs_per_row, 3.1 * rows), squeeze=False
    )
    for ax in axes.ravel():
        ax.axis("off")
    for n, panel in enumerate(panels):
        ax_img, ax_cam = (
            axes[n // pairs_per_row, 2 * (n % pairs_per_row)],
            axes[n // pairs_per_row, 2 * (n % pairs_per_row) + 1],
        )
        image = panel["image"]
        ax_img.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=1)
        ax_cam.imshow(overlay(image, panel["heatmap"]))
        colour = GREEN if panel["right"] else RED
        ax_img.set_title(f"true: {panel['true']}", color=colour, fontsize=9)
        ax_cam.set_title(f"pred: {panel['pred']} ({panel['prob']:.2f})", color=colour, fontsize=9)
    fig.suptitle(f"{'Grad-CAM++' if method == 'gradcampp' else 'Grad-CAM'} on layer '{layer}' for the predicted class",
                 fontsize=10)  # fmt: skip
    fig.tight_layout()
    return _save(fig, path)


def gradcam_panels(
    bundle_dir: str | os.PathLike, pred: Predictions, indices: list[int], method: str
) -> tuple[list[dict], str]:
    """Grad-CAM heat maps for the given prediction rows, using the bundle's preprocessing and
    network (``toolkit.inference.bundle.load_bundle`` parses ``configs/inference.json``)."""
    import torch

    from toolkit.evaluation.gradcam import Explainer, display_plane, map_plane
    from toolkit.bundle.loading import load_bundle

    bundle = load_bundle(bundle_dir)
    if list(bundle.class_names) != pred.class_names:
        raise ValueError(
            f"bundle classes {bundle.class_names} differ from the predictions' {pred.class_names}"
        )
    explainer = Explainer(bundle.network, method=method)
    panels = []
    for i in indices:
        try:
            data = bundle.preprocessing({"image": pred.images[i]})
        except Exception as e:  # a moved or corrupt file: leave this one out, keep the others
            logger.warning("Grad-CAM skips %s: %s", pred.images[i], e)
            continue
        image = torch.as_tensor(data["image"]).float()
        true, guess = pred.y_true[i], pred.y_pred[i]
        top = int(pred.probs[i].argmax())  # the predicted class (multi-label: the most probable one)
        heatmap = explainer(image[None], class_idx=top)[0]
        panels.append({
            "image": display_plane(image.numpy()),
            "heatmap": map_plane(heatmap),
            "true": _label_text(true, pred.class_names),
            "pred": _label_text(guess, pred.class_names),
            "prob": float(pred.probs[i, top]),
            "right": bool(np.array_equal(true, guess)),
            "file": pred.images[i],
        })  # fmt: skip
    if indices and not panels:
        raise ValueError(
            f"none of the {len(indices)} chosen images could be read (first: {pred.images[indices[0]]})"
        )
    return panels, explainer.target_layer


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
    return (f'<figure{cls}><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")  # fmt: skip


def _section(title: str, body: str) -> str:
    return f"<section><h2>{html.escape(title)}</h2>{body}</section>"


def _metrics_html(m: dict) -> str:
    ci = m.get("confidence_intervals", {})
    b = m.get("bootstrap", {})
    auc_key = "roc_auc_macro" if m["task"] == "multi_label" else "roc_auc_ovr_macro"
    rows = [["Accuracy" + (" (exact match)" if m["task"] == "multi_label" else ""), _with_ci(m["accuracy"], ci.get("accuracy"))],
            ["ROC AUC, macro one-vs-rest", _with_ci(m.get(auc_key), ci.get(auc_key))]]  # fmt: skip
    for avg in ("macro", "weighted"):
        if avg in m:
            for key in ("precision", "recall", "f1"):
                rows.append([f"{key.capitalize() if key != 'f1' else 'F1'}, {avg} average",
                             _with_ci(m[avg][key], ci.get(avg, {}).get(key))])  # fmt: skip
    summary = _table(["metric", "value (95% CI)"], rows)
    per_class_rows = []
    for name, values in m["per_class"].items():
        cci = ci.get("per_class", {}).get(name, {})
        per_class_rows.append([html.escape(name), str(values["support"])] +
                              [_with_ci(values[k], cci.get(k)) for k in ("precision", "recall", "f1", "roc_auc")])  # fmt: skip
    per_class = _table(
        ["class", "support", "precision (PPV)", "recall (sensitivity)", "F1", "ROC AUC"], per_class_rows
    )
    note = (f'<p class="note">{m["num_samples"]} test images. 95% confidence intervals: percentile bootstrap, '
            f'{b.get("n_resamples", "?")} resamples of {b.get("num_units", "?")} {b.get("unit", "image")}s '
            f'(seed {b.get("seed", "?")}).'
            + (" Resampling whole patients keeps correlated images of one patient together." if b.get("unit") == "patient"
               else " No patient ids: images were resampled independently, which is optimistic if a patient has several images.")
            + "</p>")  # fmt: skip
    if m["task"] == "multi_label":
        note += f'<p class="note">Per-class figures use the threshold {m["threshold"]}.</p>'
    return summary + per_class + note


def _calibration_html(cal: dict) -> str:
    ci = cal.get("intervals", {})
    rows = [["ECE on test, as evaluated", _with_ci(cal["ece_before"], ci.get("ece_before"))]]
    if cal.get("temperature") is not None:
        rows += [["Temperature T (fitted on validation)", _fmt(cal["temperature"])],
                 ["ECE on test after temperature scaling", _with_ci(cal["ece_after"], ci.get("ece_after"))]]  # fmt: skip
    text = _table(["", "value (95% CI)"], rows)
    text += (f'<p class="note">Expected calibration error with {cal["n_bins"]} equal-width bins of '
             f'{html.escape(cal["confidence"])}. ')  # fmt: skip
    if cal.get("temperature") is None:
        text += "No validation predictions were given, so no temperature was fitted. "
    else:
        text += ("Temperature scaling divides the logits by T; it does not change the predicted class of a "
                 "single-label model. ")  # fmt: skip
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
        rows.append([html.escape(name), _fmt(p["validation"]["threshold"], 4), _fmt(p["validation"]["sensitivity"]),
                     _with_ci(t["sensitivity"], ci.get("sensitivity")), _with_ci(t["specificity"], ci.get("specificity")),
                     _with_ci(t["ppv"], ci.get("ppv"))])  # fmt: skip
    return (_table(["class", "threshold", "validation sensitivity", "test sensitivity", "test specificity", "test PPV"], rows)
            + f'<p class="note">Threshold = the highest probability cut-off reaching sensitivity {target:.2f} on the '
              "validation set, then applied unchanged to the test set.</p>")  # fmt: skip


def _audit_html(audit: dict, path: Path) -> str:
    leak = audit["leakage"]
    rows = [[html.escape(pair.replace("|", " / ")), str(c.get("shared_patients", 0)),
             str(c.get("exact_duplicate_pairs", 0)), str(c.get("near_duplicate_pairs", 0))]
            for pair, c in leak["counts_by_split_pair"].items()]  # fmt: skip
    text = f"<p>Audit of the data set (<code>{html.escape(str(path))}</code>): "
    text += "<b>leakage found</b>.</p>" if leak["found"] else "no leakage found.</p>"
    if rows:
        text += _table(
            ["split pair", "shared patients", "exact duplicate pairs", "near-duplicate pairs"], rows
        )
    copies = leak.get("images_with_a_copy_in_another_split", {})
    if copies.get("test"):
        text += (f'<div class="warn">{copies["test"]} test images have an exact or near copy in another split; '
                 "the test metrics above are optimistic.</div>")  # fmt: skip
    return text


# ---------------------------------------------------------------------------------------------
# The report


def _calibrate(pred: Predictions, val: Predictions | None, bundle_dir, save_temperature: bool, n_bins: int,
               n_resamples: int, seed: int) -> tuple[dict, dict]:  # fmt: skip
    """ECE (with bootstrap CI) of the test predictions, before and after a temperature fitted on
    ``val``; optionally saved to the bundle. Returns (summary, reliability diagrams)."""
    what = "predicted probability" if pred.multi_label else "top-class confidence"
    cal = {"n_bins": n_bins, "confidence": what, "ece_before": calibration.expected_calibration_error(
        pred.y_true, pred.probs, n_bins), "temperature": None}  # fmt: skip
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
        cal.update(temperature=t, ece_after=calibration.expected_calibration_error(pred.y_true, scaled, n_bins),
                   validation_predictions=str(val.path), validation_nll_before=calibration.negative_log_likelihood(
                       val_logits, val.y_true), validation_nll_after=calibration.negative_log_likelihood(
                       val_logits, val.y_true, t))  # fmt: skip
        if save_temperature:
            target = Path(bundle_dir) / "models" / calibration.TEMPERATURE_FILE
            # the predictions were made with the bundle's current temperature: compose the two
            combined = calibration.load_temperature(target) * t
            calibration.save_temperature(combined, target, fitted_on=str(val.path), ece_test_before=cal["ece_before"],
                                         ece_test_after=cal["ece_after"])  # fmt: skip
            cal.update(saved_to=str(target), saved_temperature=combined)

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
    bundle_dir: str | os.PathLike | None = None,
    out_dir: str | os.PathLike | None = None,
    validation_predictions: str | os.PathLike | None = None,
    history: str | os.PathLike | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
    target_sensitivity: float = 0.9,
    cam_method: str = "gradcam",
    n_grid: int = 16,
    n_cam: int = 4,
    n_bins: int = 15,
    save_temperature: bool = False,
    title: str | None = None,
    audit: str | os.PathLike | None = None,
) -> dict:
    """Write ``report.html`` + PNGs + metrics (with CIs), ``calibration.json`` and
    ``operating_points.json`` to ``out_dir`` (default ``<eval_dir>/report``); returns a summary
    with the paths. ``save_temperature`` writes the fitted temperature to
    ``<bundle_dir>/models/temperature.json`` (combined with the one the predictions were made with).
    ``audit``: an ``audit.json`` of ``cit audit`` whose leakage findings are shown with the metrics."""
    started = time.perf_counter()
    eval_dir = Path(eval_dir).resolve()
    out_dir = Path(out_dir).resolve() if out_dir else eval_dir / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    pred = read_predictions(eval_dir / "predictions.csv")
    val_path = Path(validation_predictions) if validation_predictions else _default_validation(eval_dir)
    val = read_predictions(val_path) if val_path else None
    if val is not None and val.class_names != pred.class_names:
        raise ValueError(
            f"{val_path}: classes {val.class_names} differ from the test predictions' {pred.class_names}"
        )
    if save_temperature and (bundle_dir is None or val is None):
        raise ValueError("saving a temperature needs the bundle and validation predictions to fit it on")
    history_path = Path(history) if history else eval_dir.parent / "train" / "training_history.csv"
    rng = np.random.default_rng(seed)
    figures: list[tuple[Path, str, bool]] = []
    warnings: list[str] = []

    # metrics + bootstrap intervals
    if pred.multi_label:
        metrics = multilabel_metrics(pred.y_true, pred.probs, pred.class_names)
    else:
        metrics = classification_metrics(pred.y_true, pred.probs, pred.class_names)
    bootstrap.add_intervals(metrics, bootstrap.metric_intervals(
        pred.y_true, pred.probs, pred.class_names, groups=pred.groups, multi_label=pred.multi_label,
        n_resamples=n_resamples, seed=seed))  # fmt: skip
    metric_files = write_metrics(metrics, out_dir)

    cal, diagrams = _calibrate(pred, val, bundle_dir, save_temperature, n_bins, n_resamples, seed)
    what = "predicted probability" if pred.multi_label else "top-class confidence"
    write_text_atomic(
        out_dir / "calibration.json", json.dumps({**cal, "reliability": diagrams}, indent=1) + "\n"
    )
    figures.append((plot_reliability(diagrams, out_dir / "reliability.png", what),
                    "Reliability diagram: observed frequency (blue) against mean confidence (red outline) per bin; calibrated bars meet the diagonal.", True))  # fmt: skip

    # operating points (binary and multi-label tasks)
    points = None
    if val is not None and (pred.multi_label or len(pred.class_names) == 2):
        points = operating_points(val.y_true, val.probs, pred.y_true, pred.probs, pred.class_names,
                                  target_sensitivity, pred.multi_label, test_groups=pred.groups,
                                  n_resamples=n_resamples, seed=seed)  # fmt: skip
        write_text_atomic(out_dir / "operating_points.json", json.dumps(points, indent=1) + "\n")

    # figures
    if history_path.is_file():
        try:
            curves = plot_training_history(history_path, out_dir / "training_curves.png")
            figures.insert(0, (curves, "Loss and accuracy per epoch (training_history.csv).", True))
        except (ValueError, KeyError, OSError) as e:
            warnings.append(f"Cannot plot the training history {history_path}: {e}")
    else:
        warnings.append(f"No training history at {history_path}: learning curves are left out.")
    if pred.multi_label:
        figures.append((plot_multilabel_confusion(metrics["confusion_matrix"], pred.class_names,
                                                  out_dir / "confusion_matrix.png"),
                        "Confusion matrix per class at the 0.5 threshold.", True))  # fmt: skip
    else:
        figures.append((plot_confusion(metrics["confusion_matrix"], pred.class_names, out_dir / "confusion_matrix.png"),
                        "Confusion matrix: counts, and normalised per true class (the diagonal is the recall).", True))  # fmt: skip
    roc, pr = plot_roc_pr(pred, out_dir / "roc.png", out_dir / "precision_recall.png")
    figures += [(roc, "ROC curves, one class against the rest.", False),
                (pr, "Precision-recall curves; the baseline of each is its prevalence.", False)]  # fmt: skip
    grid = sorted(rng.choice(len(pred.images), size=min(n_grid, len(pred.images)), replace=False).tolist())
    figures.append((plot_sample_grid(pred, grid, out_dir / "samples.png"),
                    f"{len(grid)} random test images; title green when the prediction is right, red when wrong.", True))  # fmt: skip

    if bundle_dir is not None and n_cam > 0:
        right = [i for i in range(len(pred.images)) if np.array_equal(pred.y_true[i], pred.y_pred[i])]
        wrong = [i for i in range(len(pred.images)) if not np.array_equal(pred.y_true[i], pred.y_pred[i])]
        chosen = [int(i) for group in (right, wrong) if group
                  for i in rng.choice(group, size=min(n_cam, len(group)), replace=False)]  # fmt: skip
        try:
            panels, layer = gradcam_panels(bundle_dir, pred, chosen, cam_method)
            figures.append((plot_gradcam(panels, out_dir / "gradcam.png", cam_method, layer),
                            f"Heat maps for {sum(p['right'] for p in panels)} right and "
                            f"{sum(not p['right'] for p in panels)} wrong predictions: where the network looked.", True))  # fmt: skip
        except Exception as e:  # a report without heat maps beats no report; say why
            logger.exception("Grad-CAM failed")
            warnings.append(f"Grad-CAM overlays could not be made: {type(e).__name__}: {e}")
    elif bundle_dir is None:
        warnings.append("Grad-CAM overlays need the bundle (--bundle).")

    # page
    sections = []
    if warnings:
        sections.append("".join(f'<div class="warn">{html.escape(w)}</div>' for w in warnings))
    sections.append(_section("Metrics", _metrics_html(metrics)))
    if audit is not None:
        audit_report = json.loads(Path(audit).read_text(encoding="utf-8"))
        sections.append(_section("Data audit", _audit_html(audit_report, Path(audit))))
    sections.append(_section("Calibration", _calibration_html(cal)))
    if points is not None:
        sections.append(_section(f"Operating points (target sensitivity {target_sensitivity:.2f})",
                                 _operating_html(points, target_sensitivity)))  # fmt: skip
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
    title = title or f"Evaluation report: {bundle_dir and Path(bundle_dir).name or eval_dir.parent.name}"
    subtitle = (f"<p>Predictions: {html.escape(str(pred.path))}</p>"
                f"<p>{metrics['num_samples']} test images, classes: {html.escape(', '.join(pred.class_names))}; "
                f"generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}</p>")  # fmt: skip
    page = Template(TEMPLATE.read_text(encoding="utf-8")).substitute(
        title=html.escape(title), subtitle=subtitle, sections="\n".join(sections)
    )
    html_path = write_text_atomic(out_dir / "report.html", page)
    summary = {
        "html": str(html_path),
        "figures": [str(f[0]) for f in figures],
        "metrics": {k: str(v) for k, v in metric_files.items()},
        "calibration": {k: v for k, v in cal.items()},
        "operating_points": points,
        "warnings": warnings,
        "elapsed_seconds": round(time.perf_counter() - started, 1),
    }
    write_text_atomic(out_dir / "report.json", json.dumps(summary, indent=1) + "\n")
    return summary
