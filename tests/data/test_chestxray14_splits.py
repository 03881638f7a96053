"""ChestX-ray14 as users have it: NIH's CSV or a copy with other column spellings, the official
split lists when present, patient-grouped splits otherwise, and the rare-finding single-label task."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from toolkit.data import build_datalist, load_datalist
from toolkit.data.sources import CHESTXRAY14_FINDINGS

# (findings, patient) per image: several images per patient, rows with no finding, multi-label rows
ROWS = [
    ("Cardiomegaly", 1),
    ("Cardiomegaly|Emphysema", 1),
    ("No Finding", 1),
    ("Effusion|Infiltration", 2),
    ("Effusion", 2),
    ("No Finding", 3),
    ("Hernia", 3),
    ("Mass|Nodule", 4),
    ("No Finding", 4),
    ("No Finding", 4),
    ("Pneumonia", 5),
    ("Atelectasis", 6),
    ("No Finding", 7),
    ("Edema|Effusion", 8),
    ("Hernia", 9),
    ("No Finding", 10),
    ("Pneumothorax", 11),
    ("Fibrosis", 12),
    ("No Finding", 13),
    ("Consolidation", 14),
    ("Pleural_Thickening", 15),
    ("No Finding", 16),
    ("Infiltration", 17),
    ("No Finding", 18),
    ("Effusion", 19),
    ("No Finding", 20),
]


def image_name(index: int, patient: int) -> str:
    return f"{patient:08d}_{index:03d}.png"


def write_chestxray14(root, nih_columns: bool = True, image_size: int = 24, seed: int = 0):
    """A ChestX-ray14-shaped folder: images/ + the label CSV (NIH's spelling, or the snake_case copy's)."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    if nih_columns:
        lines = ["Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age"]
        csv_name = "Data_Entry_2017.csv"
    else:
        lines = ["file,finding_labels,patient_id,view_position"]
        csv_name = "labels.csv"
    for k, (findings, patient) in enumerate(ROWS):
        name = image_name(k, patient)
        Image.fromarray(rng.integers(0, 256, (image_size, image_size), dtype=np.uint8)).save(
            root / "images" / name
        )
        lines.append(
            f"{name},{findings},{k},{patient},50" if nih_columns else f"images/{name},{findings},{patient},PA"
        )
    (root / csv_name).write_text("\n".join(lines) + "\n")
    return root / csv_name


def _patients(items):
    return {i["patient_id"] for i in items}


@pytest.mark.parametrize("nih_columns", [True, False])
def test_multi_label_split_by_patient(tmp_path, nih_columns):
    csv_path = write_chestxray14(tmp_path / "cxr", nih_columns)
    source = csv_path if nih_columns else csv_path.parent  # the folder works too (one label file in it)
    doc = load_datalist(build_datalist(source, tmp_path / "datalist.json", ratios="0.6,0.2,0.2", seed=3))
    assert doc["multi_label"] is True and doc["labels"] == CHESTXRAY14_FINDINGS
    splits = {k: doc[k] for k in ("training", "validation", "test")}
    assert sum(len(v) for v in splits.values()) == len(ROWS)
    for a in splits:
        for b in splits:
            if a < b:
                assert not _patients(splits[a]) & _patients(splits[b]), f"{a} and {b} share a patient"
    by_name = {item["image"].rsplit("/", 1)[-1]: item["label"] for v in splits.values() for item in v}
    assert by_name[image_name(1, 1)] == [
        int(f in ("Cardiomegaly", "Emphysema")) for f in CHESTXRAY14_FINDINGS
    ]
    assert by_name[image_name(2, 1)] == [0] * 14  # "No Finding": all zeros


def test_official_split_lists_are_kept(tmp_path):
    csv_path = write_chestxray14(tmp_path / "cxr")
    test_patients = {2, 4, 9}
    test = [image_name(k, p) for k, (_, p) in enumerate(ROWS) if p in test_patients]
    train_val = [image_name(k, p) for k, (_, p) in enumerate(ROWS) if p not in test_patients]
    (csv_path.parent / "test_list.txt").write_text("\n".join(test) + "\n")
    (csv_path.parent / "train_val_list.txt").write_text("\n".join(train_val) + "\n")
    doc = load_datalist(build_datalist(csv_path, tmp_path / "datalist.json", val_fraction=0.25, seed=0))
    assert sorted(i["image"].rsplit("/", 1)[-1] for i in doc["test"]) == sorted(test)
    assert {int(p) for p in _patients(doc["test"])} == test_patients
    assert doc["validation"] and not _patients(doc["validation"]) & _patients(doc["training"])
    assert doc["ratios"] == "published"


def test_rare_findings_as_single_label_classes(tmp_path):
    csv_path = write_chestxray14(tmp_path / "cxr")
    classes = ["No Finding", "Hernia", "Effusion"]
    doc = load_datalist(
        build_datalist(csv_path, tmp_path / "datalist.json", ratios="0.6,0.2,0.2", classes=classes)
    )
    assert doc["multi_label"] is False and doc["labels"] == classes
    items = [i for k in ("training", "validation", "test") for i in doc[k]]
    names = {i["image"].rsplit("/", 1)[-1]: i["label_name"] for i in items}
    # exactly one of the classes applies: kept with it; "Edema|Effusion" -> Effusion; Mass|Nodule -> left out
    assert names[image_name(6, 3)] == "Hernia" and names[image_name(13, 8)] == "Effusion"
    assert names[image_name(2, 1)] == "No Finding"
    assert image_name(7, 4) not in names and image_name(0, 1) not in names
    expected = sum(1 for f, _ in ROWS if sum(c in f.split("|") for c in classes) == 1)
    assert len(items) == expected
    with pytest.raises(ValueError, match="unknown ChestX-ray14 class"):
        build_datalist(csv_path, tmp_path / "other.json", classes=["No Finding", "Hernia", "Covid"])
