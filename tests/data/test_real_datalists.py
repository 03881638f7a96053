"""Datalist builders on the real public data beside the repo (listing files only)."""

from __future__ import annotations

import csv
from collections import Counter

import numpy as np

from toolkit.data import build_datalist, check_no_leakage, from_medmnist, load_datalist


def test_kermany_keeps_published_test_split(shared_data, tmp_path):
    root = (
        shared_data / "kermany_cxr_224"
    ).resolve()  # the datalist holds resolved paths (shared/ may be a link)
    out = build_datalist(
        root, tmp_path / "kermany.json", label_from_name="kermany_3class", patient_from_name="kermany", seed=0
    )
    doc = load_datalist(out)
    assert doc["labels"] == ["normal", "bacteria", "virus"]
    with open(root / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    expected = Counter((r["split"], r["label_3class"]) for r in rows)
    got = Counter()
    for split in ("training", "validation", "test"):
        for item in doc[split]:
            got[("test" if split == "test" else "train", item["label_name"])] += 1
    assert got == expected
    published_test = {str(root / r["file"]) for r in rows if r["split"] == "test"}
    assert {i["image"] for i in doc["test"]} == published_test
    # validation is carved from training by patient (about 15 %), stratified
    check_no_leakage({"training": doc["training"], "validation": doc["validation"]})
    share = len(doc["validation"]) / (len(doc["training"]) + len(doc["validation"]))
    assert 0.13 < share < 0.17
    by_file = {str(root / r["file"]): r["patient_id"] for r in rows}
    assert all(by_file[i["image"]] == i["patient_id"] for i in doc["training"])


def test_breastmnist(shared_data, tmp_path):
    npz = shared_data / "medmnist" / "breastmnist.npz"
    splits = from_medmnist(npz, tmp_path)
    data = np.load(npz)
    for prefix, name in (("train", "training"), ("val", "validation"), ("test", "test")):
        labels = data[f"{prefix}_labels"].reshape(-1)
        assert [i["label"] for i in splits[name]] == labels.tolist()
    doc = load_datalist(build_datalist(npz, tmp_path / "breast.json"))
    assert doc["class_counts"]["test"] == np.bincount(data["test_labels"].reshape(-1)).tolist()
