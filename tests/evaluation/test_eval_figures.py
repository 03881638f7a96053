"""The figures: one confusion-matrix plot for matrices and the CSVs `write_metrics` writes, learning curves."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image

from toolkit.evaluation import figures
from toolkit.evaluation.metrics import classification_metrics, multilabel_metrics, write_metrics


def _png_size(path) -> tuple[int, int]:
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


def test_confusion_matrix_from_the_csv_write_metrics_writes(tmp_path):
    y = np.array([0, 1, 2, 2, 1, 0, 2])
    probs = np.eye(3)[[0, 1, 2, 1, 1, 2, 2]] * 0.8 + 0.2 / 3
    write_metrics(classification_metrics(y, probs, ["a", "b", "c"]), tmp_path)
    png = figures.plot_confusion_matrix(tmp_path / "confusion_matrix.csv")
    assert png == tmp_path / "confusion_matrix.png" and _png_size(png)[0] > 300


def test_confusion_matrix_of_a_multilabel_task(tmp_path):
    y = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]])
    probs = np.array([[0.9, 0.2, 0.4], [0.1, 0.8, 0.3], [0.7, 0.3, 0.1], [0.2, 0.1, 0.9]])
    metrics = multilabel_metrics(y, probs, ["x", "y", "z"])
    write_metrics(metrics, tmp_path / "from_csv")
    from_csv = figures.plot_confusion_matrix(tmp_path / "from_csv" / "confusion_matrix.csv")
    direct = figures.plot_confusion_matrix(
        metrics["confusion_matrix"], tmp_path / "direct.png", ["x", "y", "z"]
    )
    assert _png_size(from_csv) == _png_size(direct)


def test_confusion_matrix_inputs_are_checked(tmp_path):
    with pytest.raises(ValueError, match="needs class_names and out_path"):
        figures.plot_confusion_matrix([[1, 0], [0, 1]])
    with pytest.raises(ValueError, match=r"shape \(2, 2\) does not fit 3 classes"):
        figures.plot_confusion_matrix([[1, 0], [0, 1]], tmp_path / "cm.png", ["a", "b", "c"])
    (tmp_path / "other.csv").write_text("class,precision\na,0.5\n")
    with pytest.raises(ValueError, match="is not a confusion matrix"):
        figures.plot_confusion_matrix(tmp_path / "other.csv")


def test_training_history(tmp_path):
    history = tmp_path / "training_history.csv"
    with open(history, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy"])
        w.writerows([[e, 1 / e, 1 - 0.5 / e, "", ""] for e in range(1, 4)])  # no validation yet
    png = figures.plot_training_history(history)
    assert png == tmp_path / "training_curves.png" and _png_size(png)[0] > 300
    (tmp_path / "empty.csv").write_text("epoch,train_loss\n")
    with pytest.raises(ValueError, match="has no epochs"):
        figures.plot_training_history(tmp_path / "empty.csv")


def test_plot_run_draws_what_a_run_folder_allows(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "training_history.csv").write_text("epoch,train_loss\n1,0.5\n2,0.4\n")
    write_metrics(classification_metrics([0, 1], [[0.8, 0.2], [0.3, 0.7]], ["n", "p"]), tmp_path / "eval")
    made = figures.plot_run(tmp_path)
    assert [p.name for p in made] == ["training_curves.png", "confusion_matrix.png"]
