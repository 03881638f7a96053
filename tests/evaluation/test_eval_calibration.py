"""ECE, reliability bins and temperature scaling on synthetic sets with known calibration."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import softmax

from toolkit.evaluation.calibration import (
    apply_temperature,
    expected_calibration_error,
    fit_temperature,
    load_temperature,
    logits_from_probabilities,
    reliability_diagram,
    save_temperature,
)


def test_ece_hand_computed():
    prob = [[0.8, 0.2], [0.8, 0.2], [0.6, 0.4], [0.6, 0.4]]
    labels = [0, 1, 0, 0]
    # bin of 0.8: accuracy 1/2 (gap 0.3); bin of 0.6: accuracy 1 (gap 0.4); equal shares
    assert expected_calibration_error(labels, prob, n_bins=10) == pytest.approx(0.35)
    diagram = reliability_diagram(labels, prob, n_bins=10)
    assert sum(diagram["count"]) == 4 and len(diagram["bin_edges"]) == 11
    assert sorted(c for c in diagram["confidence"] if c is not None) == pytest.approx([0.6, 0.8])


def _synthetic(n=20000, classes=3, seed=0):
    """True logits and labels drawn from their softmax: the true probabilities are calibrated."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2.0, size=(n, classes))
    p = softmax(logits, axis=1)
    labels = (rng.random(n)[:, None] > np.cumsum(p, axis=1)).sum(axis=1)
    return logits, labels


def test_calibrated_set_has_low_ece_and_overconfident_high():
    logits, labels = _synthetic()
    assert expected_calibration_error(labels, softmax(logits, axis=1)) < 0.02
    overconfident = softmax(4 * logits, axis=1)
    assert expected_calibration_error(labels, overconfident) > 0.1


def test_temperature_scaling_recovers_and_lowers_ece():
    logits, labels = _synthetic(seed=1)
    val, test = slice(0, 10000), slice(10000, None)
    t = fit_temperature(4 * logits[val], labels[val])
    assert t == pytest.approx(4.0, rel=0.1)
    before = expected_calibration_error(labels[test], apply_temperature(4 * logits[test], 1.0))
    after = expected_calibration_error(labels[test], apply_temperature(4 * logits[test], t))
    assert after < before / 3 and after < 0.03
    # log-probabilities work as logits: the per-row constant cancels in the softmax
    t_from_probs = fit_temperature(logits_from_probabilities(softmax(4 * logits[val], axis=1)), labels[val])
    assert t_from_probs == pytest.approx(t, rel=0.02)


def test_multilabel_temperature():
    rng = np.random.default_rng(2)
    logits = rng.normal(0, 2, size=(8000, 2))
    labels = (rng.random(logits.shape) < 1 / (1 + np.exp(-logits))).astype(int)
    t = fit_temperature(3 * logits, labels)
    assert t == pytest.approx(3.0, rel=0.1)
    probs = apply_temperature(3 * logits, t, multi_label=True)
    assert expected_calibration_error(labels, probs) < 0.03


def test_temperature_file_round_trip(tmp_path):
    path = tmp_path / "models" / "temperature.json"
    assert load_temperature(path) == 1.0  # absent -> identity
    save_temperature(1.7, path, fitted_on="validation")
    assert load_temperature(path) == pytest.approx(1.7)


@pytest.mark.parametrize(
    "content", ["{not json", '{"temperature": -1}', '{"t": 2}', '{"temperature": "2"}', "[]"]
)
def test_malformed_temperature_file_is_named(tmp_path, content):
    path = tmp_path / "temperature.json"
    path.write_text(content)
    with pytest.raises(ValueError, match="temperature.json"):
        load_temperature(path)
