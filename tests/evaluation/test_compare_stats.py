"""The statistics of `cit compare` on inputs whose answers are known or computed by brute force."""

import csv
import json
import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from toolkit.evaluation.compare import (
    ComparisonSet,
    align_predictions,
    compare_predictions,
    delong,
    delong_covariance,
    holm,
    mcnemar,
    paired_bootstrap,
)
from toolkit.evaluation.report import read_predictions
from toolkit.studies.compare_table import markdown, write_comparison


def test_mcnemar_is_the_exact_binomial_test_of_the_discordant_pairs():
    # 7 images only the reference gets right, 1 only the other, 5 both: p = 2 (C(8,0) + C(8,1)) / 2^8
    reference = [1] * 7 + [0] + [1] * 5
    other = [0] * 7 + [1] + [1] * 5
    result = mcnemar(reference, other)
    assert (result["b_reference_only"], result["c_other_only"]) == (7, 1)
    assert result["p_value"] == pytest.approx(2 * (1 + 8) / 256)
    assert mcnemar([1, 0, 1], [1, 0, 1])["p_value"] == 1.0  # no discordant image: no evidence


def _brute_force_delong(positive, a, b):
    """DeLong et al. (1988) as written: every positive compared with every negative."""

    def components(s):
        pos, neg = s[positive], s[~positive]
        psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
        return psi.mean(axis=1), psi.mean(axis=0)  # per positive, per negative

    (pa, na), (pb, nb) = components(a), components(b)
    m, n = positive.sum(), (~positive).sum()
    cov = np.cov(np.vstack([pa, pb])) / m + np.cov(np.vstack([na, nb])) / n
    return cov, (pb.mean() - pa.mean()) / math.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])


def test_fast_delong_equals_the_pairwise_definition_with_ties():
    rng = np.random.default_rng(0)
    positive = rng.integers(0, 2, 60).astype(bool)
    a = np.round(positive * 1.2 + rng.normal(0, 0.5, 60), 1)  # rounded: many ties
    b = np.round(positive * 0.2 + rng.normal(0, 0.5, 60), 1)
    aucs, cov = delong_covariance(positive, np.vstack([a, b]))
    expected_cov, expected_z = _brute_force_delong(positive, a, b)
    assert aucs == pytest.approx([roc_auc_score(positive, a), roc_auc_score(positive, b)])
    np.testing.assert_allclose(cov, expected_cov, rtol=1e-10)
    result = delong(positive, a, b)
    assert result["z"] == pytest.approx(expected_z)
    assert result["p_value"] == pytest.approx(2 * (1 - 0.5 * (1 + math.erf(abs(expected_z) / math.sqrt(2)))))
    assert result["p_value"] < 0.05 and result["difference"] < 0


def test_delong_of_a_model_against_itself_is_not_significant_and_needs_both_outcomes():
    positive = np.array([1, 0, 1, 0, 1, 1, 0, 0], bool)
    scores = np.array([0.9, 0.2, 0.6, 0.7, 0.8, 0.4, 0.1, 0.3])
    assert delong(positive, scores, scores)["p_value"] == 1.0
    with pytest.raises(ValueError, match="at least 2 positive and 2 negative images, got 1 and 7"):
        delong(np.eye(8, dtype=bool)[0], scores, scores)  # one positive: its variance is unknown


def test_holm_step_down():
    assert holm([0.01, 0.04, None, 0.03]) == pytest.approx([0.03, 0.06, None, 0.06])
    assert holm([0.5, 0.9]) == [1.0, 1.0]
    assert holm([]) == []


def _binary_task(n_patients=40, per_patient=2, seed=0):
    """A good and a bad scorer of a binary task, `per_patient` images per patient."""
    rng = np.random.default_rng(seed)
    y = np.repeat(rng.integers(0, 2, n_patients), per_patient)
    good = np.clip(0.5 + (y - 0.5) * 0.8 + rng.normal(0, 0.2, len(y)), 0.01, 0.99)
    bad = np.clip(0.5 + rng.normal(0, 0.2, len(y)), 0.01, 0.99)
    groups = [f"p{i // per_patient}" for i in range(len(y))] if per_patient > 1 else None
    test = ComparisonSet([f"img{i}.png" for i in range(len(y))], groups, y, ["neg", "pos"], False)
    as_probs = lambda s: np.stack([1 - s, s], axis=1)  # noqa: E731
    return test, {"good": as_probs(good), "bad": as_probs(bad)}


def test_paired_bootstrap_of_a_model_against_itself_and_against_a_worse_one():
    test, probs = _binary_task()
    same = paired_bootstrap(test, probs["good"], probs["good"], n_resamples=200)
    assert same["accuracy"]["difference"] == 0 and same["accuracy"]["p_value"] == 1.0
    worse = paired_bootstrap(test, probs["good"], probs["bad"], n_resamples=200)
    assert worse["auroc"]["difference"] < 0 and worse["auroc"]["high"] < 0
    assert worse["auroc"]["p_value"] == pytest.approx(2 / 201)  # no resample reached 0: the +1 floor
    assert worse["auroc"]["p_is_bound"] and not same["accuracy"]["p_is_bound"]


@pytest.mark.parametrize("per_patient, auroc_test", [(1, "DeLong"), (2, "paired bootstrap")])
def test_comparison_flags_the_worse_model_with_intervals_around_the_estimates(per_patient, auroc_test):
    test, probs = _binary_task(n_patients=60 // per_patient, per_patient=per_patient)
    result = compare_predictions(test, {"bad": probs["bad"], "good": probs["good"]}, n_resamples=300)
    assert result["reference"] == "good" and list(result["comparisons"]) == ["bad"]
    for model in result["models"].values():
        for name, value in model["metrics"].items():
            interval = model["intervals"][name]
            assert interval["low"] <= value <= interval["high"], name
    bad = result["comparisons"]["bad"]
    assert bad["auroc"]["test"] == auroc_test and bad["auroc"]["verdict"] == "worse"
    assert bad["accuracy"]["verdict"] == "worse" and bad["accuracy"]["difference"] < 0
    # one comparison: Holm leaves the p-value as it is
    assert bad["accuracy"]["p_holm"] == bad["accuracy"]["mcnemar"]["p_value"]
    assert result["test_set"]["unit"] == ("patient" if per_patient > 1 else "image")


def test_two_equal_models_are_not_significantly_different():
    test, probs = _binary_task(seed=3)
    rng = np.random.default_rng(1)
    noisy = np.clip(probs["good"] + rng.normal(0, 0.02, probs["good"].shape), 0, 1)
    result = compare_predictions(test, {"a": probs["good"], "b": noisy}, n_resamples=200)
    other = next(iter(result["comparisons"].values()))
    assert other["accuracy"]["verdict"] == "n.s." and other["auroc"]["verdict"] == "n.s."


def test_multi_label_comparison_uses_subset_accuracy_and_macro_auroc():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, (80, 3))
    good = np.clip(y * 0.7 + rng.uniform(0, 0.3, y.shape), 0, 1)
    bad = rng.uniform(0, 1, y.shape)
    test = ComparisonSet([f"i{i}" for i in range(80)], None, y, ["a", "b", "c"], True)
    result = compare_predictions(test, {"good": good, "bad": bad}, n_resamples=200)
    assert result["models"]["good"]["metrics"]["accuracy"] == pytest.approx(
        ((good >= 0.5) == y).all(axis=1).mean()
    )
    assert result["models"]["good"]["metrics"]["auroc"] == pytest.approx(
        np.mean([roc_auc_score(y[:, k], good[:, k]) for k in range(3)])
    )
    comparison = result["comparisons"]["bad"]
    assert comparison["auroc"]["test"] == "paired bootstrap" and comparison["auroc"]["verdict"] == "worse"
    assert [row["class"] for row in comparison["per_class_delong"]] == ["a", "b", "c"]
    assert [row["n_positive"] for row in comparison["per_class_delong"]] == y.sum(axis=0).tolist()
    text = markdown(result, [{"name": "good", "status": "ok"}, {"name": "bad", "status": "ok"}])
    assert "exact-match" in text and "| good (best) |" in text and "probability >= 0.5" in text

    # each model at its own per-finding thresholds (as its evaluation chose them on validation)
    own = {"good": np.array([0.6, 0.5, 0.8]), "bad": 0.5}
    result = compare_predictions(test, {"good": good, "bad": bad}, threshold=own, n_resamples=50)
    assert result["models"]["good"]["threshold"] == [0.6, 0.5, 0.8]
    expected = ((good >= own["good"]) == y).all(axis=1).mean()
    assert result["models"]["good"]["metrics"]["accuracy"] == pytest.approx(expected)
    assert result["models"]["good"]["full"]["accuracy"] == pytest.approx(expected)  # scikit-learn agrees
    text = markdown(result, [{"name": "good", "status": "ok"}, {"name": "bad", "status": "ok"}])
    assert "each model's own per-finding thresholds" in text


def _write_predictions(path, images, labels, probs, patients=None):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "patient_id", "label", "prob_neg", "prob_pos"])
        for i, image in enumerate(images):
            writer.writerow([image, patients[i] if patients else "", labels[i], 1 - probs[i], probs[i]])
    return read_predictions(path)


def test_align_reorders_rows_and_refuses_other_test_sets(tmp_path):
    images, labels = ["a.png", "b.png", "c.png"], [0, 1, 1]
    first = _write_predictions(tmp_path / "1.csv", images, labels, [0.2, 0.7, 0.9])
    shuffled = _write_predictions(tmp_path / "2.csv", images[::-1], labels[::-1], [0.6, 0.4, 0.1])
    test, probs = align_predictions({"one": first, "two": shuffled})
    assert test.images == images
    np.testing.assert_allclose(probs["two"][:, 1], [0.1, 0.4, 0.6])

    fewer = _write_predictions(tmp_path / "3.csv", images[:2], labels[:2], [0.2, 0.7])
    with pytest.raises(ValueError, match=r"3.csv \(two\).*test rows differ \(1 image\(s\) missing"):
        align_predictions({"one": first, "two": fewer})
    relabelled = _write_predictions(tmp_path / "4.csv", images, [1, 1, 1], [0.2, 0.7, 0.9])
    with pytest.raises(ValueError, match="different labels"):
        align_predictions({"one": first, "two": relabelled})
    twice = _write_predictions(tmp_path / "5.csv", ["a.png", "a.png"], [0, 0], [0.2, 0.3])
    with pytest.raises(ValueError, match="a.png is listed twice"):
        align_predictions({"one": twice})


def test_written_files_list_every_model_and_the_failure(tmp_path):
    test, probs = _binary_task(n_patients=30, per_patient=1)
    result = compare_predictions(test, probs, n_resamples=100)
    rows = [
        {"name": "good", "status": "ok"},
        {"name": "bad", "status": "ok"},
        {
            "name": "broken",
            "status": "failed",
            "stage": "training",
            "error": "ValueError: x | y",
            "log": "b.log",
        },
    ]
    files = write_comparison(result, rows, tmp_path, {"split": {"fingerprint": "abc", "seed": 0}})
    with open(files["csv"], newline="") as f:
        table = list(csv.DictReader(f))
    assert [r["model"] for r in table] == ["good", "bad", "broken"]
    assert table[0]["best"] == "True" and table[1]["accuracy_verdict"] == "worse"
    assert table[2]["error"] == "ValueError: x | y" and table[2]["accuracy"] == ""
    text = files["markdown"].read_text()
    assert "failed at training: ValueError: x \\| y (log: `b.log`)" in text
    assert json.loads(files["json"].read_text())["comparison"]["reference"] == "good"
