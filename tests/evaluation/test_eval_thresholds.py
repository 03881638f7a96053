"""Per-finding thresholds chosen on validation, and the per-label metrics they give on a known set."""

from __future__ import annotations

import json

import numpy as np
import pytest

from toolkit.evaluation.metrics import multilabel_metrics
from toolkit.evaluation.report import build_report
from toolkit.evaluation.thresholds import (
    DEFAULT_THRESHOLD,
    best_f1_threshold,
    choose_thresholds,
    load_thresholds,
    save_thresholds,
    threshold_vector,
)


def test_best_f1_threshold_by_hand():
    truth = np.array([1, 1, 0, 1, 0, 0])
    scores = np.array([0.9, 0.4, 0.35, 0.3, 0.2, 0.1])
    # thresholds 0.9 / 0.4 / 0.35 / 0.3 give F1 0.5 / 0.8 / 0.667 / 0.857: the best keeps the 4 highest
    assert best_f1_threshold(truth, scores) == pytest.approx(0.3)
    assert best_f1_threshold(np.zeros(4), scores[:4]) == DEFAULT_THRESHOLD  # no positive: undefined


def test_thresholds_round_trip_and_order(tmp_path):
    y_true = np.array([[1, 0], [0, 0], [1, 1], [0, 0]])
    y_prob = np.array([[0.8, 0.1], [0.3, 0.2], [0.6, 0.7], [0.2, 0.6]])
    chosen = choose_thresholds(y_true, y_prob, ["a", "b"])
    assert chosen == {"a": pytest.approx(0.6), "b": pytest.approx(0.7)}
    save_thresholds(chosen, tmp_path / "thresholds.json", num_images=4)
    assert load_thresholds(tmp_path / "thresholds.json") == chosen
    assert threshold_vector(chosen, ["b", "a", "c"]).tolist() == [pytest.approx(0.7), pytest.approx(0.6), 0.5]


def test_per_label_metrics_on_a_known_prediction_set():
    y_true = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 0], [1, 0, 1]])
    y_prob = np.array(
        [[0.9, 0.2, 0.40], [0.3, 0.6, 0.10], [0.6, 0.4, 0.30], [0.1, 0.1, 0.35], [0.2, 0.3, 0.45]]
    )
    m = multilabel_metrics(y_true, y_prob, ["a", "b", "c"], threshold=[0.5, 0.35, 0.38])
    # a: predicted rows 0, 2 (both right), row 4 missed -> precision 1, recall 2/3
    # b: predicted rows 1, 2 (both right) -> precision 1, recall 1
    # c: predicted rows 0, 4 (right) -> precision 1, recall 1; row 3 (0.35) is below 0.38
    assert m["per_class"]["a"]["precision"] == 1.0 and m["per_class"]["a"]["recall"] == pytest.approx(2 / 3)
    assert m["per_class"]["b"]["recall"] == 1.0 and m["per_class"]["c"]["f1"] == 1.0
    assert m["per_class"]["a"]["f1"] == pytest.approx(0.8)
    assert m["macro"]["f1"] == pytest.approx((0.8 + 1 + 1) / 3)
    assert m["accuracy"] == pytest.approx(4 / 5)  # exact match fails on row 4 only
    assert m["per_class"]["c"]["roc_auc"] == pytest.approx(1.0)
    assert m["threshold"] == [0.5, 0.35, 0.38]


def test_report_uses_the_thresholds_the_evaluation_used(tmp_path):

    y_true = np.array([[1, 0], [0, 1], [1, 1], [0, 0], [1, 0], [0, 1]])
    y_prob = np.array([[0.45, 0.2], [0.3, 0.7], [0.6, 0.4], [0.1, 0.1], [0.42, 0.3], [0.2, 0.35]])
    lines = ["image,patient_id,label,label_name,pred,pred_name,prob_a,prob_b"]
    for k, (t, p) in enumerate(zip(y_true, y_prob, strict=True)):
        lines.append(f"img{k}.png,P{k},{t[0]}|{t[1]},,0|0,,{p[0]},{p[1]}")
    (tmp_path / "predictions.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "metrics.json").write_text(json.dumps({"threshold": [0.4, 0.3]}))  # what evaluation used
    build_report(tmp_path, tmp_path / "report", n_resamples=50)
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert metrics["threshold"] == [0.4, 0.3]
    assert (
        metrics["per_class"]["a"]["recall"] == 1.0 and metrics["per_class"]["b"]["recall"] == 1.0
    )  # 0.5 misses some
