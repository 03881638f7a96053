"""Near-duplicate confirmation measured on real pairs with known answers (../shared/data).

Known copies: brain_tumor_mri_224's labels.csv flags test images with a near-exact copy in the
source's training set (32x32 grey mean absolute difference < 1); those whose copy is in this
subset's training part are found here by the same rule. Pairs that must not match: images of
different classes that the first stage (64-bit pHash within 6 bits, any rotation / flip) pairs
anyway, in the brain MRI set and in Kermany's chest X-rays (NORMAL vs PNEUMONIA: different
children). The full rule must confirm every copy and none of the others.
"""

from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image

from toolkit.cli.audit import read_image
from toolkit.data.audit import (
    DEFAULT_CONFIRM,
    DEFAULT_HAMMING,
    DEFAULT_PIXEL,
    TRANSFORMS,
    confirm_pair,
    describe_image,
)

# First-stage candidates of different classes, found by running the first stage over each set.
BRAIN_OTHER_CLASS = [
    ("Testing/meningioma/Te-me_0079.jpg", "Training/pituitary/Tr-pi_0146.jpg"),
    ("Testing/meningioma/Te-me_0132.jpg", "Training/glioma/Tr-gl_0746.jpg"),
    ("Training/glioma/Tr-gl_0062.jpg", "Training/meningioma/Tr-me_0852.jpg"),
    ("Training/glioma/Tr-gl_0144.jpg", "Training/meningioma/Tr-me_0048.jpg"),
    ("Training/glioma/Tr-gl_0247.jpg", "Training/notumor/Tr-no_1172.jpg"),
    ("Training/glioma/Tr-gl_0827.jpg", "Training/meningioma/Tr-me_0397.jpg"),
    ("Training/glioma/Tr-gl_0886.jpg", "Training/meningioma/Tr-me_0603.jpg"),
    ("Training/meningioma/Tr-me_0257.jpg", "Training/pituitary/Tr-pi_1434.jpg"),
]
# the closest of Kermany's 364 such pairs, by 256-bit pHash and by pixel difference
KERMANY_OTHER_CLASS = [
    ("test/NORMAL/NORMAL2-IM-0196-0001.jpeg", "train/PNEUMONIA/person1399_bacteria_3549.jpeg"),
    ("train/NORMAL/IM-0119-0001.jpeg", "train/PNEUMONIA/person706_virus_1304.jpeg"),
    ("train/NORMAL/IM-0191-0001.jpeg", "train/PNEUMONIA/person607_virus_1173.jpeg"),
    ("train/NORMAL/IM-0662-0001.jpeg", "train/PNEUMONIA/person1380_bacteria_3515.jpeg"),
    ("train/NORMAL/NORMAL2-IM-0937-0001.jpeg", "train/PNEUMONIA/person833_virus_1469.jpeg"),
    ("train/NORMAL/NORMAL2-IM-1136-0001.jpeg", "train/PNEUMONIA/person1227_virus_2078.jpeg"),
    ("train/NORMAL/IM-0671-0001.jpeg", "train/PNEUMONIA/person597_virus_1150.jpeg"),
    ("test/NORMAL/NORMAL2-IM-0199-0001.jpeg", "train/PNEUMONIA/person155_virus_307.jpeg"),
    ("test/NORMAL/NORMAL2-IM-0378-0001.jpeg", "train/PNEUMONIA/person102_virus_189.jpeg"),
    ("test/PNEUMONIA/person50_virus_102.jpeg", "train/NORMAL/NORMAL2-IM-0395-0001.jpeg"),
]


def _grey32(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("L").resize((32, 32)), dtype=np.float64)


def _stage_one(a: dict, b: dict) -> tuple[int, int]:
    """(64-bit distance, transform) of the best match of b's 8 variants against a."""
    distances = [bin(a["phash"][0] ^ h).count("1") for h in b["phash"]]
    t = int(np.argmin(distances))
    return distances[t], t


def _judge(root, pairs, cache) -> list[tuple[bool, dict]]:
    out = []
    for x, y in pairs:
        for name in (x, y):
            if name not in cache:
                cache[name] = describe_image(root / name, read_image)
        a, b = cache[x], cache[y]
        distance, t = _stage_one(a, b)
        assert distance <= DEFAULT_HAMMING, (x, y, distance)  # a real first-stage candidate
        fine, pixels, ok = confirm_pair(a["thumb"], b["thumb"], t, DEFAULT_CONFIRM, DEFAULT_PIXEL)
        out.append(
            (
                ok,
                {
                    "pair": (x, y),
                    "hamming": distance,
                    "transform": TRANSFORMS[t],
                    "hamming_256": fine,
                    "pixel_difference": pixels,
                },
            )
        )
    return out


def test_confirmation_precision_on_real_pairs(shared_data):
    brain = shared_data / "brain_tumor_mri_224"
    with open(brain / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    flagged = [r["file"] for r in rows if r["near_duplicate_of_a_training_image"] == "1"]
    training = [r["file"] for r in rows if r["split"] == "Training"]
    assert len(flagged) == 60
    train32 = np.stack([_grey32(brain / f) for f in training])
    copies = []
    for name in flagged:
        mad = np.abs(train32 - _grey32(brain / name)).mean(axis=(1, 2))
        copies += [(name, training[k]) for k in np.nonzero(mad < 1)[0]]
    assert len(copies) == 9  # measured: 8 flagged test images have their copy in this training subset

    cache: dict = {}
    positives = _judge(brain, copies, cache)
    negatives = _judge(brain, BRAIN_OTHER_CLASS, cache) + _judge(
        shared_data / "kermany_cxr_224", KERMANY_OTHER_CLASS, {}
    )
    true_pos = sum(ok for ok, _ in positives)
    false_pos = [info for ok, info in negatives if ok]
    assert false_pos == [], false_pos
    assert true_pos == len(copies), [info for ok, info in positives if not ok]
    precision = true_pos / (true_pos + len(false_pos))
    assert precision == 1.0
    assert max(info["pixel_difference"] for _, info in positives) <= 0.05
    # neither check alone is enough on chest X-rays of different children: a few pass the pixel
    # threshold (all fail the 256-bit hash); both together reject every one
    assert min(info["pixel_difference"] for _, info in negatives) < DEFAULT_PIXEL
    assert min(info["hamming_256"] for _, info in negatives) > DEFAULT_CONFIRM


def test_rewindowed_copy_has_a_large_plain_difference_but_is_confirmed(shared_data):
    """pHash 0 and a plain 32 px mean absolute difference of 49 (of 255) is not a false alarm
    here: the two files are one slice at two windows, which the contrast-normalised pixel check
    sees (the plain difference would reject it)."""
    brain = shared_data / "brain_tumor_mri_224"
    a_name, b_name = "Testing/notumor/Te-no_0377.jpg", "Training/notumor/Tr-no_1132.jpg"
    plain = float(np.abs(_grey32(brain / a_name) - _grey32(brain / b_name)).mean())
    assert plain == pytest.approx(49, abs=2)
    a, b = (describe_image(brain / n, read_image) for n in (a_name, b_name))
    distance, t = _stage_one(a, b)
    fine, pixels, ok = confirm_pair(a["thumb"], b["thumb"], t)
    assert distance == 0 and ok and pixels < 0.05
