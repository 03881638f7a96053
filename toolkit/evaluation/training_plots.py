"""Figures the studies show: loss / accuracy curves per epoch and the confusion matrix, as PNG files.

They read the files the bundles write (``training_history.csv``, ``confusion_matrix.csv``), so
they also work on a finished run from the command line::

    python -m toolkit.evaluation.training_plots bundles/<name>/output
"""

from __future__ import annotations

import csv
import os
import sys
from pathlib import Path

import numpy as np

__all__ = ["plot_confusion_matrix", "plot_run", "plot_training_history"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed (servers, CI)
    import matplotlib.pyplot as plt

    return plt


def _float(value: str) -> float:
    return float(value) if value not in ("", None) else float("nan")


def plot_training_history(history_csv: str | os.PathLike, out_path: str | os.PathLike | None = None) -> Path:
    """Loss (train / validation) and accuracy (train / validation) per epoch from ``training_history.csv``
    (written by ``toolkit.bundle.TrainingHistoryWriter``); saved as ``training_curves.png`` beside it
    unless ``out_path`` is given. Returns the PNG path."""
    history_csv = Path(history_csv)
    with open(history_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{history_csv} has no epochs to plot")
    epochs = [int(r["epoch"]) for r in rows]
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
        for split, style in (("train", "o-"), ("val", "s--")):
            values = [_float(r.get(f"{split}_{metric}", "")) for r in rows]
            if not all(np.isnan(values)):
                ax.plot(epochs, values, style, label="training" if split == "train" else "validation")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.set_title(f"{metric} per epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    out = Path(out_path) if out_path else history_csv.with_name("training_curves.png")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def plot_confusion_matrix(
    confusion_csv: str | os.PathLike, out_path: str | os.PathLike | None = None
) -> Path:
    """The single-label ``confusion_matrix.csv`` (rows = true class, columns = predicted; written by
    ``toolkit.evaluation.metrics.write_metrics``) drawn with scikit-learn's ``ConfusionMatrixDisplay``;
    saved as ``confusion_matrix.png`` beside it unless ``out_path`` is given. Returns the PNG path."""
    from sklearn.metrics import ConfusionMatrixDisplay

    confusion_csv = Path(confusion_csv)
    with open(confusion_csv, newline="") as f:
        table = list(csv.reader(f))
    if len(table) < 2 or table[0][0] != "true\\pred":
        raise ValueError(
            f"{confusion_csv} is not a single-label confusion matrix (expected a 'true\\pred' header)"
        )
    names = table[0][1:]
    matrix = np.array([[int(v) for v in row[1:]] for row in table[1:]])
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(1.2 * len(names) + 3, 1.2 * len(names) + 2.5))
    ConfusionMatrixDisplay(matrix, display_labels=names).plot(
        ax=ax, cmap="Blues", colorbar=False, values_format="d"
    )
    ax.set_title(f"confusion matrix ({matrix.sum()} images)")
    fig.tight_layout()
    out = Path(out_path) if out_path else confusion_csv.with_suffix(".png")
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


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
    for path in plot_run(sys.argv[1] if len(sys.argv) > 1 else "."):
        print(path)
