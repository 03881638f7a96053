"""Bootstrap intervals: numpy fast path equals scikit-learn, patient resampling, seeding."""

from __future__ import annotations

import numpy as np
import pytest

from toolkit.evaluation.bootstrap import (
    add_intervals,
    fast_classification_metrics,
    fast_multilabel_metrics,
    flatten_metrics,
    interval_of,
    metric_intervals,
    resampling_units,
)
from toolkit.evaluation.metrics import classification_metrics, multilabel_metrics, write_metrics


def _assert_same(fast: dict, reference: dict):
    assert fast.keys() == reference.keys()
    for key, value in reference.items():
        if value is None:
            assert fast[key] is None, key
        else:
            assert fast[key] == pytest.approx(value, abs=1e-12), key


@pytest.mark.parametrize("seed", range(5))
def test_fast_metrics_equal_sklearn(seed):
    rng = np.random.default_rng(seed)
    names = ["a", "b", "c", "d"]
    # class d absent in some draws; probabilities rounded to create ties
    y = rng.integers(0, 3 + seed % 2, size=40)
    p = np.round(rng.dirichlet(np.ones(4), size=40), 1)
    _assert_same(
        fast_classification_metrics(y, p, names), flatten_metrics(classification_metrics(y, p, names))
    )
    y_ml = (rng.random((40, 4)) < 0.3).astype(int)
    y_ml[:, 3] = 0 if seed % 2 else y_ml[:, 3]
    _assert_same(
        fast_multilabel_metrics(y_ml, p, names, 0.3), flatten_metrics(multilabel_metrics(y_ml, p, names, 0.3))
    )


def test_resampling_units_group_patients():
    units = resampling_units(["p1", "p1", "p2", None, "", "p2"], 6)
    assert sorted(map(list, units)) == [[0, 1], [2, 5], [3], [4]]


def test_intervals_cover_estimate_and_are_seeded():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    p1 = np.clip(0.3 * y + rng.random(200) * 0.7, 0, 1)
    p = np.stack([1 - p1, p1], axis=1)
    m = classification_metrics(y, p, ["neg", "pos"])
    r = metric_intervals(y, p, ["neg", "pos"], n_resamples=300, seed=3)
    ci = r["intervals"]["accuracy"]
    assert ci["low"] < m["accuracy"] < ci["high"] and ci["high"] - ci["low"] < 0.2
    assert r == metric_intervals(y, p, ["neg", "pos"], n_resamples=300, seed=3)
    assert r["method"]["unit"] == "image" and r["method"]["num_units"] == 200


def test_patient_resampling_widens_intervals_for_correlated_images():
    # 20 patients x 10 near-identical images: the effective sample size is 20, not 200
    rng = np.random.default_rng(1)
    patient_y = rng.integers(0, 2, 20)
    patient_correct = rng.random(20) < 0.7
    y = np.repeat(patient_y, 10)
    pred = np.where(np.repeat(patient_correct, 10), y, 1 - y)
    p = np.eye(2)[pred] * 0.8 + 0.1
    groups = np.repeat([f"p{i}" for i in range(20)], 10)
    by_image = metric_intervals(y, p, ["n", "p"], n_resamples=300)["intervals"]["accuracy"]
    by_patient = metric_intervals(y, p, ["n", "p"], groups=groups, n_resamples=300)
    width = by_patient["intervals"]["accuracy"]["high"] - by_patient["intervals"]["accuracy"]["low"]
    assert width > 2 * (by_image["high"] - by_image["low"])
    assert by_patient["method"]["unit"] == "patient" and by_patient["method"]["num_units"] == 20


def test_intervals_written_with_metrics(tmp_path):
    y = np.array([0, 1, 2] * 10)
    p = np.eye(3)[np.array([0, 1, 2, 0, 1, 1] * 5)] * 0.7 + 0.1
    m = add_intervals(classification_metrics(y, p, "xyz"), metric_intervals(y, p, "xyz", n_resamples=100))
    assert interval_of(m, "per_class", "z", "recall")["high"] <= 1.0
    assert interval_of(m, "per_class", "nope", "f1") is None
    header = write_metrics(m, tmp_path)["per_class"].read_text().splitlines()[0]
    assert "f1_ci_low" in header and "roc_auc_ci_high" in header
