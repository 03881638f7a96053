"""Thresholds chosen on validation for a target sensitivity, applied unchanged to test."""

from __future__ import annotations

import numpy as np
import pytest

from toolkit.evaluation.operating_points import (
    operating_points,
    sensitivity_specificity,
    threshold_for_sensitivity,
)

VAL_Y = [1, 1, 1, 1, 0, 0, 0, 0]
VAL_S = [0.9, 0.8, 0.7, 0.4, 0.6, 0.3, 0.2, 0.1]


def test_threshold_hand_computed():
    assert threshold_for_sensitivity(VAL_Y, VAL_S, 0.75) == pytest.approx(0.7)  # 3 of 4 positives
    assert threshold_for_sensitivity(VAL_Y, VAL_S, 1.0) == pytest.approx(0.4)
    assert threshold_for_sensitivity(VAL_Y, VAL_S, 0.5) == pytest.approx(0.8)
    with pytest.raises(ValueError, match="both positive and negative"):
        threshold_for_sensitivity([1, 1], [0.2, 0.3])


def test_sensitivity_specificity_hand_computed():
    r = sensitivity_specificity(VAL_Y, VAL_S, 0.4)
    assert (r["tp"], r["fn"], r["fp"], r["tn"]) == (4, 0, 1, 3)
    assert r["sensitivity"] == 1.0 and r["specificity"] == pytest.approx(0.75)
    assert r["ppv"] == pytest.approx(0.8) and r["npv"] == 1.0


def test_binary_operating_point_uses_validation_threshold():
    val_prob = np.stack([1 - np.array(VAL_S), VAL_S], axis=1)
    test_y = [1, 1, 0, 0, 0]
    test_s = np.array([0.75, 0.5, 0.72, 0.2, 0.1])
    points = operating_points(
        VAL_Y, val_prob, test_y, np.stack([1 - test_s, test_s], 1), ["normal", "tumour"], 0.75, n_resamples=50
    )
    assert list(points) == ["tumour"]
    tumour = points["tumour"]
    assert tumour["validation"]["threshold"] == pytest.approx(0.7)
    # on test at 0.7: 0.75 caught, 0.5 missed; 0.72 a false positive
    assert tumour["test"]["sensitivity"] == 0.5 and tumour["test"]["specificity"] == pytest.approx(2 / 3)
    assert set(tumour["test_intervals"]) == {"sensitivity", "specificity", "ppv", "npv"}


def test_multilabel_reports_every_class_and_names_impossible_ones():
    val_y = np.array([[1, 0], [0, 0], [1, 0], [0, 0]])
    prob = np.array([[0.9, 0.1], [0.2, 0.3], [0.6, 0.2], [0.4, 0.1]])
    points = operating_points(
        val_y, prob, val_y, prob, ["effusion", "nodule"], 0.9, multi_label=True, n_resamples=20
    )
    assert points["effusion"]["test"]["sensitivity"] == 1.0
    assert "nodule" in points["nodule"]["error"]
