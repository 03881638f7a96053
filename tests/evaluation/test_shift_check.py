"""scripts/shift_check.py's two-sample test on features made here (its embedding is the audit's,
tested with the audit)."""

from __future__ import annotations

import numpy as np

from tests.conftest import load_script


def _script():
    return load_script("shift_check")


def _datalist(rng, shift: float):
    """Two classes; the test images of class "a" (only) moved by ``shift`` along one feature.
    Four images per patient."""
    doc, features = {"labels": ["a", "b"]}, {}
    for split, n in (("training", 80), ("validation", 20), ("test", 40)):
        doc[split] = []
        for label in range(2):
            for k in range(n):
                path = f"{split}/{label}/{k}.png"
                x = rng.normal(size=8) + 3 * label
                if split == "test" and label == 0:
                    x[0] += shift
                features[path] = x
                doc[split].append({"image": path, "label": label, "patient_id": f"{split}-{label}-{k // 4}"})
    return doc, features


def test_a_shifted_class_is_told_apart_and_an_unshifted_one_is_not():
    compare = _script().compare
    doc, features = _datalist(np.random.default_rng(0), shift=4.0)
    result = compare(doc, features, "training", "test", seed=0)
    assert result["a"]["images"] == {"training": 80, "test": 40}
    assert result["a"]["auroc"] > 0.95 and result["a"]["auroc_95ci"][0] > 0.9
    low, high = result["b"]["auroc_95ci"]
    assert 0.3 < result["b"]["auroc"] < 0.7 and low < 0.5 < high
    # the control pair: validation is drawn like training, in both classes
    control = compare(doc, features, "training", "validation", seed=0)
    assert all(control[c]["auroc_95ci"][0] < 0.5 < control[c]["auroc_95ci"][1] for c in ("a", "b"))


def test_a_class_with_too_few_images_is_skipped_not_scored():
    doc, features = _datalist(np.random.default_rng(1), shift=0.0)
    doc["test"] = [i for i in doc["test"] if i["label"] == 1] + [i for i in doc["test"] if i["label"] == 0][
        :3
    ]
    result = _script().compare(doc, features, "training", "test", seed=0)
    assert "skipped" in result["a"] and result["a"]["images"]["test"] == 3
    assert "auroc" in result["b"]
