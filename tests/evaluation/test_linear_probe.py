"""scripts/linear_probe.py's fit and scoring on features made here (its embedding is the audit's,
tested with the audit)."""

from __future__ import annotations

import numpy as np

from tests.conftest import load_script


def _script():
    return load_script("linear_probe")


def _datalist(rng, swap_test: bool):
    """Three classes around three far-apart centres; 30 / 9 / 12 images per class and split."""
    centres = np.eye(3) * 5
    doc, features = {"labels": ["a", "b", "c"]}, {}
    for split, n in (("training", 30), ("validation", 9), ("test", 12)):
        doc[split] = []
        for label in range(3):
            for k in range(n):
                path = f"{split}/{label}/{k}.png"
                features[path] = centres[label] + rng.normal(size=3)
                shown = (label + 1) % 3 if swap_test and split == "test" else label
                doc[split].append({"image": path, "label": shown, "group": f"{split}{label}{k // 3}"})
    return doc, features


def test_separable_classes_are_probed_perfectly_and_a_relabelled_test_split_is_not():
    probe = _script().probe
    rng = np.random.default_rng(0)
    result = probe(*_datalist(rng, swap_test=False), seed=0)
    assert result["images"] == {"training": 90, "validation": 27, "test": 36}
    assert result["accuracy"] == 1.0 and result["accuracy_95ci"] == [1.0, 1.0]
    assert result["C"] in _script().C_GRID and len(result["validation_accuracy_by_C"]) == len(
        _script().C_GRID
    )
    # the same training and validation, the test labels moved to the next class: the score is the test's
    swapped = probe(*_datalist(np.random.default_rng(0), swap_test=True), seed=0)
    assert swapped["C"] == result["C"]  # chosen on validation, which did not change
    assert swapped["accuracy"] == 0.0 and swapped["accuracy_95ci"][1] == 0.0
