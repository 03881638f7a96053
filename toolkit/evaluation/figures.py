"""The figures of an evaluation, as PNG files: learning curves, confusion matrices, ROC / precision-recall
curves, reliability diagrams, sample images and Grad-CAM panels.

Figures are drawn with matplotlib's object API (``matplotlib.figure.Figure``), not ``pyplot``: no
global backend or figure registry is touched, so they work on servers and in CI, and importing this
module changes nothing for a notebook. Every PNG is written atomically (``toolkit.io``).

The two figures the bundles draw from a run's files also work from the command line::

    python -m toolkit.evaluation.figures bundles/<name>/output
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_curve

from toolkit.evaluation.gradcam import display_plane, overlay
from toolkit.io import atomic_write_bytes
from toolkit.transforms.readers import MedicalImageReader

__all__ = [
    "label_text",
    "plot_confusion_matrix",
    "plot_gradcam",
    "plot_reliability",
    "plot_roc_pr",
    "plot_run",
    "plot_sample_grid",
    "plot_training_history",
    "read_display_image",
]

logger = logging.getLogger(__name__)

GREEN, RED = "#1a7f37", "#c62828"


def _save(fig: Figure, path: str | os.PathLike, dpi: int = 100) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return atomic_write_bytes(path, buffer.getvalue())


def label_text(label, class_names: Sequence[str]) -> str:
    """A class index as its name; a multi-hot vector as the names of its classes ("none" if empty)."""
    if np.ndim(label):
        names = [class_names[k] for k, v in enumerate(label) if v]
        return ", ".join(names) or "none"
    return class_names[int(label)]


# ---------------------------------------------------------------------------------------------
# Training curves


def _float(value: str | None) -> float:
    return float(value) if value not in ("", None) else float("nan")


def plot_training_history(history_csv: str | os.PathLike, out_path: str | os.PathLike | None = None) -> Path:
    """Loss and accuracy (mean AUROC for multi-label runs) per epoch, training and validation, from ``training_history.csv``
    (written by ``toolkit.bundle.TrainingHistoryWriter``); saved as ``training_curves.png`` beside it
    unless ``out_path`` is given. Returns the PNG path."""
    history_csv = Path(history_csv)
    with open(history_csv, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{history_csv} has no epochs to plot")
    epochs = [int(r["epoch"]) for r in rows]
    fig = Figure(figsize=(10, 4))
    axes = fig.subplots(1, 2)
    score = "mean_auroc" if any(r.get("val_mean_auroc") for r in rows) else "accuracy"
    for ax, metric in zip(axes, ("loss", score), strict=True):
        for split, style in (("train", "o-"), ("val", "s--")):
            values = [_float(r.get(f"{split}_{metric}")) for r in rows]
            if not all(np.isnan(values)):
                ax.plot(epochs, values, style, label="training" if split == "train" else "validation")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set(xlabel="epoch", ylabel=metric, title=f"{metric} per epoch")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    return _save(fig, Path(out_path) if out_path else history_csv.with_name("training_curves.png"))


# ---------------------------------------------------------------------------------------------
# Confusion matrices


def _read_confusion_csv(path: Path) -> tuple[np.ndarray, list[str]]:
    """The matrix and class names of a ``confusion_matrix.csv`` written by ``metrics.write_metrics``:
    single-label ``true\\pred`` table -> (C, C); multi-label ``class,tn,fp,fn,tp`` rows -> (C, 2, 2)."""
    with open(path, newline="", encoding="utf-8") as f:
        table = [row for row in csv.reader(f) if row]
    header = table[0] if table else []
    try:
        if len(table) >= 2 and header[0] == "true\\pred":
            return np.array([[int(v) for v in row[1:]] for row in table[1:]]), header[1:]
        if len(table) >= 2 and header == ["class", "tn", "fp", "fn", "tp"]:
            matrices = np.array([[int(v) for v in row[1:]] for row in table[1:]]).reshape(-1, 2, 2)
            return matrices, [row[0] for row in table[1:]]
    except ValueError as e:
        raise ValueError(f"{path}: unreadable count in the confusion matrix ({e})") from e
    raise ValueError(
        f"{path} is not a confusion matrix (expected a 'true\\pred' or 'class,tn,fp,fn,tp' header)"
    )


def plot_confusion_matrix(
    confusion: str | os.PathLike | np.ndarray | Sequence,
    out_path: str | os.PathLike | None = None,
    class_names: Sequence[str] | None = None,
) -> Path:
    """Draw a confusion matrix; returns the PNG path.

    ``confusion`` is either the ``confusion_matrix.csv`` that ``toolkit.evaluation.metrics.write_metrics``
    writes (the PNG then defaults to ``confusion_matrix.png`` beside it), or the matrix itself with
    ``class_names`` and ``out_path``: (C, C) counts with rows = true class and columns = predicted
    (single-label: drawn as counts and row-normalised, whose diagonal is the recall), or (C, 2, 2)
    per-class ``[[tn, fp], [fn, tp]]`` (multi-label: one small matrix per class).
    """
    if isinstance(confusion, (str, os.PathLike)):
        csv_path = Path(confusion)
        matrix, names = _read_confusion_csv(csv_path)
        out = Path(out_path) if out_path else csv_path.with_suffix(".png")
    else:
        if class_names is None or out_path is None:
            raise ValueError("a confusion matrix given as numbers needs class_names and out_path")
        matrix, names, out = np.asarray(confusion), [str(c) for c in class_names], Path(out_path)
    if matrix.ndim == 3 and matrix.shape[1:] == (2, 2) and len(names) == len(matrix):
        return _save(_multilabel_confusion_figure(matrix, names), out)
    if matrix.ndim != 2 or matrix.shape != (len(names), len(names)):
        raise ValueError(
            f"confusion matrix of shape {matrix.shape} does not fit {len(names)} classes {names}"
        )
    return _save(_confusion_figure(matrix, names), out)


def _confusion_figure(matrix: np.ndarray, class_names: list[str]) -> Figure:
    cm = matrix.astype(float)
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    size = max(4.0, 0.6 * len(class_names) + 2.5)
    fig = Figure(figsize=(2 * size + 1, size))
    axes = fig.subplots(1, 2)
    for ax, data, title, fmt in (
        (axes[0], cm, "Counts", "{:.0f}"),
        (axes[1], norm, "Row-normalised", "{:.2f}"),
    ):
        top = data.max() if data.max() > 0 else 1
        im = ax.imshow(data, cmap="Blues", vmin=0, vmax=top)
        ax.set_xticks(range(len(class_names)), class_names, rotation=40, ha="right")
        ax.set_yticks(range(len(class_names)), class_names)
        ax.set(xlabel="predicted", ylabel="true", title=title)
        for i in range(len(class_names)):
            for j in range(len(class_names)):
                colour = "white" if data[i, j] > top / 2 else "black"
                ax.text(j, i, fmt.format(data[i, j]), ha="center", va="center", color=colour, fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.suptitle(f"Confusion matrix ({int(cm.sum())} images)", fontsize=11)
    fig.tight_layout()
    return fig


def _multilabel_confusion_figure(matrices: np.ndarray, class_names: list[str]) -> Figure:
    n = len(class_names)
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(3 * cols, 2.8 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for k, ax in enumerate(axes.ravel()):
        if k >= n:
            ax.axis("off")
            continue
        m = matrices[k].astype(float)
        ax.imshow(m, cmap="Blues", vmin=0)
        for i in range(2):
            for j in range(2):
                colour = "white" if m[i, j] > m.max() / 2 else "black"
                ax.text(j, i, f"{m[i, j]:.0f}", ha="center", va="center", color=colour)
        ax.set_xticks([0, 1], ["pred 0", "pred 1"])
        ax.set_yticks([0, 1], ["true 0", "true 1"])
        ax.set_title(class_names[k], fontsize=10)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------
# Curves and calibration


def _curve_targets(y_true: np.ndarray, class_names: Sequence[str], multi_label: bool):
    if multi_label:
        return [(k, n, y_true[:, k]) for k, n in enumerate(class_names)]
    if len(class_names) == 2:
        return [(1, class_names[1], (y_true == 1).astype(int))]
    return [(k, n, (y_true == k).astype(int)) for k, n in enumerate(class_names)]


def plot_roc_pr(
    y_true,
    probs,
    class_names: Sequence[str],
    roc_path: str | os.PathLike,
    pr_path: str | os.PathLike,
    multi_label: bool = False,
) -> tuple[Path, Path]:
    """One-vs-rest ROC and precision-recall curves with AUC / average precision per class (binary tasks:
    the second class only). ``y_true``: class indices (N,) or multi-hot (N, C); ``probs``: (N, C)."""
    y_true, probs = np.asarray(y_true), np.asarray(probs, dtype=float)
    fig_roc, fig_pr = Figure(figsize=(5.6, 5)), Figure(figsize=(5.6, 5))
    ax_roc, ax_pr = fig_roc.subplots(), fig_pr.subplots()
    for k, name, truth in _curve_targets(y_true, class_names, multi_label):
        if truth.min() == truth.max():
            continue  # class absent (or everything): no curve
        fpr, tpr, _ = roc_curve(truth, probs[:, k])
        ax_roc.plot(fpr, tpr, label=f"{name} (AUC {auc(fpr, tpr):.3f})")
        precision, recall, _ = precision_recall_curve(truth, probs[:, k])
        ap = average_precision_score(truth, probs[:, k])
        ax_pr.step(
            recall, precision, where="post", label=f"{name} (AP {ap:.3f}, prevalence {truth.mean():.2f})"
        )
    ax_roc.plot([0, 1], [0, 1], "--", color="grey", linewidth=1)
    ax_roc.set(
        xlabel="1 - specificity (false positive rate)",
        ylabel="sensitivity (true positive rate)",
        title="ROC, one vs rest",
        xlim=(0, 1),
        ylim=(0, 1.01),
    )
    ax_pr.set(
        xlabel="recall (sensitivity)",
        ylabel="precision (PPV)",
        title="Precision-recall, one vs rest",
        xlim=(0, 1),
        ylim=(0, 1.01),
    )
    for ax, where in ((ax_roc, "lower right"), (ax_pr, "lower left")):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc=where, fontsize=8)
    return _save(fig_roc, roc_path), _save(fig_pr, pr_path)


def plot_reliability(diagrams: dict[str, dict], path: str | os.PathLike, what: str) -> Path:
    """Reliability diagram(s) (``calibration.reliability_diagram`` dicts by title): observed frequency
    against mean confidence per bin, with the ECE; ``what`` names the confidence on the x axis."""
    fig = Figure(figsize=(5 * len(diagrams), 4.6))
    axes = fig.subplots(1, len(diagrams), squeeze=False)
    for ax, (title, d) in zip(axes[0], diagrams.items(), strict=True):
        edges = np.asarray(d["bin_edges"])
        centres = (edges[:-1] + edges[1:]) / 2
        width = edges[1] - edges[0]
        acc = np.array([np.nan if v is None else v for v in d["accuracy"]])
        conf = np.array([np.nan if v is None else v for v in d["confidence"]])
        filled = ~np.isnan(acc)  # empty bins draw nothing
        ax.bar(centres[filled], acc[filled], width=width * 0.95, color="#4a78b5", label="observed frequency")
        ax.bar(
            centres[filled],
            conf[filled],
            width=width * 0.95,
            fill=False,
            edgecolor=RED,
            linewidth=1.2,
            label="mean confidence",
        )
        ax.plot([0, 1], [0, 1], "--", color="grey", linewidth=1, label="perfect calibration")
        ax.set(
            xlim=(0, 1),
            ylim=(0, 1),
            xlabel=f"{what} (mean per bin)",
            ylabel="observed frequency",
            title=f"{title}: ECE {d['ece']:.3f}",
        )
        ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------
# Images


def read_display_image(path: str | os.PathLike) -> np.ndarray | None:
    """An image file as a displayable (H, W) / (H, W, 3) array in [0, 1] (volumes: the middle slice),
    or None, with a logged warning, when the file cannot be read."""
    reader = MedicalImageReader(dicom_frame="middle", max_size=256)
    try:
        arr, meta = reader.get_data(reader.read(path))
    except (OSError, ValueError) as e:  # ImageReadError is a ValueError; a moved file must not stop a report
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


def plot_sample_grid(
    images: Sequence[str],
    y_true,
    y_pred,
    class_names: Sequence[str],
    path: str | os.PathLike,
    columns: int = 4,
) -> Path:
    """The image files titled true / predicted class, green when right and red when wrong."""
    rows = max(1, math.ceil(len(images) / columns))
    fig = Figure(figsize=(3.1 * columns, 3.4 * rows))
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, file, true, guess in zip(axes.ravel(), images, y_true, y_pred, strict=False):
        image = read_display_image(file)
        if image is None:
            ax.text(0.5, 0.5, "unreadable", ha="center", va="center")
        else:
            ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=1)
        right = bool(np.array_equal(true, guess))
        ax.set_title(
            f"true: {label_text(true, class_names)}\npred: {label_text(guess, class_names)}",
            color=GREEN if right else RED,
            fontsize=9,
        )
    fig.tight_layout()
    return _save(fig, path)


def plot_gradcam(panels: Sequence[dict], path: str | os.PathLike, method: str, layer: str) -> Path:
    """Image and heat-map overlay side by side for each explained prediction. A panel holds
    ``image`` ((H, W) or (H, W, 3) in [0, 1]), ``heatmap`` ((H, W) in [0, 1]), ``true`` and ``pred``
    (texts), ``prob`` (of the predicted class) and ``right`` (bool)."""
    pairs_per_row = 2
    rows = max(1, math.ceil(len(panels) / pairs_per_row))
    fig = Figure(figsize=(2.8 * 2 * pairs_per_row, 3.1 * rows))
    axes = fig.subplots(rows, 2 * pairs_per_row, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for n, panel in enumerate(panels):
        row, col = divmod(n, pairs_per_row)
        ax_img, ax_cam = axes[row, 2 * col], axes[row, 2 * col + 1]
        image = panel["image"]
        ax_img.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=1)
        ax_cam.imshow(overlay(image, panel["heatmap"]))
        colour = GREEN if panel["right"] else RED
        ax_img.set_title(f"true: {panel['true']}", color=colour, fontsize=9)
        ax_cam.set_title(f"pred: {panel['pred']} ({panel['prob']:.2f})", color=colour, fontsize=9)
    name = "Grad-CAM++" if method == "gradcampp" else "Grad-CAM"
    fig.suptitle(f"{name} on layer '{layer}' for the predicted class", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------
# A finished run


def plot_run(output_dir: str | os.PathLike) -> list[Path]:
    """Every figure that the files under a bundle's ``output_dir`` (``train/``, ``eval/``) allow."""
    output_dir = Path(output_dir)
    made = []
    if (output_dir / "train" / "training_history.csv").is_file():
        made.append(plot_training_history(output_dir / "train" / "training_history.csv"))
    if (output_dir / "eval" / "confusion_matrix.csv").is_file():
        made.append(plot_confusion_matrix(output_dir / "eval" / "confusion_matrix.csv"))
    return made


if __name__ == "__main__":
    for made in plot_run(sys.argv[1] if len(sys.argv) > 1 else "."):
        print(made)
