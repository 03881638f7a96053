"""Metrics on a hand-made prediction set equal values computed by hand."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest

from toolkit.evaluation.metrics import classification_metrics, multilabel_metrics, write_metrics

NAMES = ["a", "b", "c"]
Y_TRUE = [0, 0, 1, 1, 2, 2]
Y_PROB = [
    [0.7, 0.2, 0.1],  # a -> a
    [0.3, 0.6, 0.1],  # a -> b
    [0.2, 0.7, 0.1],  # b -> b
    [0.1, 0.8, 0.1],  # b -> b
    [0.2, 0.2, 0.6],  # c -> c
    [0.5, 0.1, 0.4],  # c -> a
]


def test_single_label_hand_computed():
    m = classification_metrics(Y_TRUE, Y_PROB, NAMES)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    a, b, c = (m["per_class"][n] for n in NAMES)
    assert (a["precision"], a["recall"], a["f1"]) == pytest.approx((1 / 2, 1 / 2, 1 / 2))
    assert (b["precision"], b["recall"], b["f1"]) == pytest.approx((2 / 3, 1.0, 0.8))
    assert (c["precision"], c["recall"], c["f1"]) == pytest.approx((1.0, 1 / 2, 2 / 3))
    assert [a["support"], b["support"], c["support"]] == [2, 2, 2]
    # class a: positives score 0.7, 0.3 against negatives 0.2, 0.1, 0.2, 0.5 -> 7 of 8 pairs ordered
    assert [a["roc_auc"], b["roc_auc"], c["roc_auc"]] == pytest.approx([7 / 8, 1.0, 1.0])
    assert m["roc_auc_ovr_macro"] == pytest.approx(23 / 24)
    assert m["macro"]["precision"] == pytest.approx(13 / 18)
    assert m["macro"]["recall"] == pytest.approx(2 / 3)
    assert m["macro"]["f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert m["weighted"]["f1"] == pytest.approx(m["macro"]["f1"])  # equal supports
    assert m["num_samples"] == 6 and m["class_names"] == NAMES


def test_weighted_average_uses_supports():
    m = classification_metrics([0, 0, 0, 1], [[0.9, 0.1], [0.8, 0.2], [0.4, 0.6], [0.3, 0.7]], ["neg", "pos"])
    # neg: P 1, R 2/3, F1 0.8 (support 3); pos: P 1/2, R 1, F1 2/3 (support 1)
    assert m["weighted"]["precision"] == pytest.approx((3 * 1 + 0.5) / 4)
    assert m["weighted"]["f1"] == pytest.approx((3 * 0.8 + 2 / 3) / 4)


def test_absent_class_has_no_auc():
    m = classification_metrics([0, 1, 0, 1], [[0.6, 0.3, 0.1]] * 2 + [[0.2, 0.7, 0.1]] * 2, NAMES)
    assert m["per_class"]["c"]["roc_auc"] is None
    assert m["per_class"]["c"]["support"] == 0
    assert m["roc_auc_ovr_macro"] is None
    json.dumps({k: v for k, v in m.items()})  # JSON-ready: no NaN, no numpy types


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="class names"):
        classification_metrics([0, 1], [[0.5, 0.5], [0.5, 0.5]], NAMES)
    with pytest.raises(ValueError, match="outside"):
        classification_metrics([0, 3], [[0.5, 0.3, 0.2]] * 2, NAMES)


def test_multilabel_hand_computed():
    y_true = [[1, 0], [0, 1], [1, 1], [0, 0]]
    y_prob = [[0.9, 0.2], [0.4, 0.6], [0.3, 0.7], [0.6, 0.1]]
    m = multilabel_metrics(y_true, y_prob, ["x", "y"], threshold=0.5)
    x, y = m["per_class"]["x"], m["per_class"]["y"]
    assert (x["precision"], x["recall"], x["f1"], x["roc_auc"]) == pytest.approx((0.5, 0.5, 0.5, 0.5))
    assert (y["precision"], y["recall"], y["f1"], y["roc_auc"]) == pytest.approx((1, 1, 1, 1))
    assert m["accuracy"] == pytest.approx(0.5)  # exact-match rows 0 and 1
    assert m["roc_auc_macro"] == pytest.approx(0.75)
    assert m["macro"]["f1"] == pytest.approx(0.75)
    assert m["confusion_matrix"][0] == [[1, 1], [1, 1]]  # x: tn fp / fn tp
    # a higher threshold turns the false positive 0.6 of x into a true negative
    assert (
        multilabel_metrics(y_true, y_prob, ["x", "y"], threshold=0.65)["per_class"]["x"]["precision"] == 1.0
    )


def test_write_metrics_files(tmp_path):
    m = classification_metrics(Y_TRUE, Y_PROB, NAMES)
    paths = write_metrics(m, tmp_path / "eval")
    assert set(paths) == {"metrics", "per_class", "confusion_matrix", "classification_report"}
    saved = json.loads(paths["metrics"].read_text())
    assert saved["accuracy"] == pytest.approx(4 / 6) and "classification_report" not in saved
    rows = list(csv.DictReader(paths["per_class"].open()))
    assert [r["class"] for r in rows] == NAMES
    assert float(rows[0]["roc_auc"]) == pytest.approx(7 / 8)
    cm = list(csv.reader(paths["confusion_matrix"].open()))
    assert cm[0] == ["true\\pred", *NAMES] and cm[3] == ["c", "1", "0", "1"]
    report = paths["classification_report"].read_text()
    assert "macro avg" in report and "0.6667" in report
    assert not list((tmp_path / "eval").glob(".*tmp"))  # no temporary files left behind
    umask = os.umask(0)
    os.umask(umask)
    assert paths["metrics"].stat().st_mode & 0o777 == 0o666 & ~umask  # readable by others, unlike mkstemp


def test_write_multilabel_metrics(tmp_path):
    m = multilabel_metrics([[1, 0], [0, 1], [1, 1], [0, 0]], np.full((4, 2), 0.7), ["x", "y"])
    paths = write_metrics(m, tmp_path)
    cm = list(csv.reader(paths["confusion_matrix"].open()))
    assert cm[0] == ["class", "tn", "fp", "fn", "tp"] and cm[1] == ["x", "0", "2", "0", "2"]


def test_evaluation_csvs_neutralise_formulas_in_class_names_and_ids(tmp_path):
    """Class names and patient ids come from whoever made the data: no CSV the project writes may
    carry a live spreadsheet formula (issue #26). Plain numbers stay numbers."""
    import csv

    from toolkit.io import atomic_write_csv

    names = ["=1+1", "@SUM(A1)", "-0.5"]
    metrics = classification_metrics(np.array([0, 1, 2, 0]), np.eye(3)[[0, 1, 2, 1]], names)
    paths = write_metrics(metrics, tmp_path)
    for key in ("per_class", "confusion_matrix"):
        cells = [c for row in csv.reader(paths[key].open()) for c in row]
        assert "'=1+1" in cells and "'@SUM(A1)" in cells and "-0.5" in cells, cells
        assert not any(c.startswith(("=", "@")) for c in cells)
    atomic_write_csv(tmp_path / "p.csv", ["image", "patient_id"], [["+cmd|' /C calc'!A0", -0.25]])
    assert list(csv.reader((tmp_path / "p.csv").open())) == [
        ["image", "patient_id"],
        ["'+cmd|' /C calc'!A0", "-0.25"],
    ]
