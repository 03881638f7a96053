"""Datalist builders on folder layouts, CSVs, MedMNIST files and DICOM folders written here."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from toolkit.data import (
    CHESTXRAY14_FINDINGS,
    build_datalist,
    check_no_leakage,
    from_chestxray14,
    from_class_folders,
    from_csv,
    from_dicom_folder,
    from_medmnist,
    load_datalist,
    save_datalist,
)


def png(path: Path, value: int = 100, size: int = 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size), value, np.uint8)).save(path)
    return path


def dicom(path: Path, patient: str, accession: str, value: int = 0) -> Path:
    """A small real DICOM file (secondary capture, 16-bit grey)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.PatientName, ds.AccessionNumber, ds.Modality = (
        patient,
        f"TEST^{patient}",
        accession,
        "OT",
    )
    ds.Rows = ds.Columns = 4
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = np.full((4, 4), value, np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


# ---------------------------------------------------------------------------------------------
# class folders


def test_class_folders_with_nested_split_folders(tmp_path, caplog):
    root = tmp_path / "chest_xray"
    for split in ("Train", "val", "TESTING"):
        for cls in ("NORMAL", "PNEUMONIA"):
            for i in range(2):
                png(root / "wrapper" / split / cls / f"{cls}_{i}.png")
    (root / "wrapper" / "Train" / "NORMAL" / "scan.mha").write_text("not supported")
    (root / "wrapper" / "notes.txt").write_text("metadata, no warning")
    (root / "wrapper" / "Train" / "NORMAL" / "broken.png").write_bytes(b"not a png at all")
    with caplog.at_level(logging.WARNING):
        items = from_class_folders(root)
    assert len(items) == 12
    assert {i["split"] for i in items} == {"training", "validation", "test"}
    assert sorted({(i["label"], i["label_name"]) for i in items}) == [(0, "NORMAL"), (1, "PNEUMONIA")]
    assert all(Path(i["image"]).is_absolute() and Path(i["image"]).is_file() for i in items)
    assert "broken.png" in caplog.text and "scan.mha" in caplog.text and "notes.txt" not in caplog.text


def test_class_folders_without_splits_and_fixed_class_order(tmp_path):
    for cls in ("cat_b", "cat_a", "cat_c"):
        png(tmp_path / cls / "x.png")
        png(tmp_path / cls / "deeper" / "y.png")
    items = from_class_folders(tmp_path, classes=["cat_c", "cat_a", "cat_b"])
    assert len(items) == 6 and not any("split" in i for i in items)
    assert {(i["label_name"], i["label"]) for i in items} == {("cat_c", 0), ("cat_a", 1), ("cat_b", 2)}
    assert sorted(i["label_name"] for i in from_class_folders(tmp_path))[0] == "cat_a"


def test_kermany_presets(tmp_path):
    names = {
        "train/NORMAL/IM-0115-0001.jpeg": ("normal", "IM-0115"),
        "train/NORMAL/NORMAL2-IM-0629-0001.jpeg": ("normal", "NORMAL2-IM-0629"),
        "train/PNEUMONIA/person1_bacteria_1.jpeg": ("bacteria", "person1"),
        "train/PNEUMONIA/person1_bacteria_2.jpeg": ("bacteria", "person1"),
        "test/PNEUMONIA/person22_virus_50.jpeg": ("virus", "person22"),
    }
    for rel in names:
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(path, format="JPEG")
    items = from_class_folders(tmp_path, label_from_name="kermany_3class", patient_from_name="kermany")
    got = {str(Path(i["image"]).relative_to(tmp_path)): (i["label_name"], i["patient_id"]) for i in items}
    assert got == names
    assert {i["label_name"]: i["label"] for i in items} == {"normal": 0, "bacteria": 1, "virus": 2}
    with pytest.raises(ValueError, match="unknown label_from_name preset"):
        from_class_folders(tmp_path, label_from_name="nope")
    # False turns the preset off (MONAI's command line drops `--split#label_from_name None`)
    assert {i["label_name"] for i in from_class_folders(tmp_path, label_from_name=False)} == {
        "NORMAL",
        "PNEUMONIA",
    }


# ---------------------------------------------------------------------------------------------
# CSV manifests


def test_generic_csv(tmp_path, caplog):
    for i in range(4):
        png(tmp_path / "img" / f"{i}.png")
    (tmp_path / "meta").mkdir()
    csv_path = tmp_path / "meta" / "labels.csv"
    csv_path.write_text(
        "path,diagnosis,pid,fold\n"
        "img/0.png,benign,p1,train\n"
        "img/1.png,malignant,p1,train\n"
        "img/2.png,benign,p2,Test\n"
        "img/3.png,malignant,p3,val\n"
        "img/missing.png,benign,p4,train\n"
    )
    with caplog.at_level(logging.WARNING):
        items = from_csv(
            csv_path, "path", "diagnosis", root=tmp_path, patient_column="pid", split_column="fold"
        )
    assert "missing.png" in caplog.text
    assert [i["label"] for i in items] == [0, 1, 0, 1]
    assert [i["split"] for i in items] == ["training", "training", "test", "validation"]
    assert items[1]["patient_id"] == "p1" and items[0]["image"] == str(tmp_path / "img" / "0.png")
    with pytest.raises(ValueError, match="labels.csv: no image column .image.; columns are"):
        from_csv(csv_path, "image", "diagnosis")


def test_csv_relative_to_its_folder_multi_label_and_int_labels(tmp_path):
    for i in range(3):
        png(tmp_path / f"{i}.png")
    (tmp_path / "m.csv").write_text("image,label\n0.png,a;b\n1.png,\n2.png,c\n")
    items = from_csv(tmp_path / "m.csv", multi_label_sep=";")
    assert [i["label"] for i in items] == [[1, 1, 0], [0, 0, 0], [0, 0, 1]]
    (tmp_path / "n.csv").write_text("image,label\n0.png,2\n1.png,0\n")
    assert [i["label"] for i in from_csv(tmp_path / "n.csv")] == [2, 0]


def test_chestxray14(tmp_path, caplog):
    png(tmp_path / "images_001" / "images" / "00000001_000.png")
    png(tmp_path / "images_001" / "images" / "00000001_001.png")
    png(tmp_path / "images_002" / "images" / "00000002_000.png")
    csv_path = tmp_path / "Data_Entry_2017.csv"
    csv_path.write_text(
        "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age\n"
        "00000001_000.png,Cardiomegaly|Emphysema,0,1,58\n"
        "00000001_001.png,No Finding,1,1,58\n"
        "00000002_000.png,Hernia,0,2,81\n"
        "00000003_000.png,Mass,0,3,60\n"
    )
    with caplog.at_level(logging.WARNING):
        items = from_chestxray14(csv_path, tmp_path)
    assert "1 file(s)" in caplog.text and "00000003_000.png" in caplog.text
    assert len(items) == 3 and len(CHESTXRAY14_FINDINGS) == 14
    first = items[0]["label"]
    assert [CHESTXRAY14_FINDINGS[k] for k, v in enumerate(first) if v] == ["Cardiomegaly", "Emphysema"]
    assert items[1]["label"] == [0] * 14
    assert items[2]["label"][13] == 1 and items[2]["patient_id"] == "2"
    # build_datalist recognises the NIH CSV and never splits a patient
    out = build_datalist(csv_path, tmp_path / "dl.json", ratios="training=0.5,validation=0.5")
    doc = load_datalist(out)
    assert doc["multi_label"] is True and doc["labels"] == CHESTXRAY14_FINDINGS
    check_no_leakage({k: doc[k] for k in ("training", "validation")})


# ---------------------------------------------------------------------------------------------
# MedMNIST


def _npz(path, shape, labels_shape, rng, k=2):
    arrays = {}
    for prefix, n in (("train", 6), ("val", 2), ("test", 3)):
        arrays[f"{prefix}_images"] = rng.integers(0, 255, (n, *shape), dtype=np.uint8)
        arrays[f"{prefix}_labels"] = rng.integers(0, k, (n, *labels_shape)).astype(np.uint8)
    np.savez(path, **arrays)
    return arrays


@pytest.mark.parametrize(
    "shape,labels_shape,suffix",
    [
        ((28, 28), (1,), ".png"),
        ((28, 28, 3), (), ".png"),
        ((8, 8, 8), (1,), ".nii.gz"),
        ((28, 28), (4,), ".png"),
    ],
)
def test_medmnist(tmp_path, shape, labels_shape, suffix):
    arrays = _npz(tmp_path / "toy.npz", shape, labels_shape, np.random.default_rng(0))
    splits = from_medmnist(tmp_path / "toy.npz", tmp_path / "out")
    assert {k: len(v) for k, v in splits.items()} == {"training": 6, "validation": 2, "test": 3}
    first = splits["test"][2]
    assert first["image"].endswith(suffix)
    stored = (
        nib.load(first["image"]).get_fdata()
        if suffix == ".nii.gz"
        else np.asarray(Image.open(first["image"]))
    )
    np.testing.assert_array_equal(stored, arrays["test_images"][2])
    expected = arrays["test_labels"][2]
    if labels_shape == (4,):
        assert first["label"] == expected.tolist()
    else:
        assert first["label"] == int(np.asarray(expected).reshape(-1)[0])
    mtime = Path(first["image"]).stat().st_mtime_ns
    from_medmnist(tmp_path / "toy.npz", tmp_path / "out")  # exported once
    assert Path(first["image"]).stat().st_mtime_ns == mtime


def test_medmnist_rejects_other_npz(tmp_path):
    np.savez(tmp_path / "x.npz", a=np.zeros(3))
    with pytest.raises(ValueError, match="x.npz is not a MedMNIST file"):
        from_medmnist(tmp_path / "x.npz", tmp_path)


# ---------------------------------------------------------------------------------------------
# DICOM folders


def test_dicom_folder_with_accession_csv(tmp_path, caplog):
    root = tmp_path / "pacs_export"
    dicom(root / "a" / "IM0001", "PAT1", "ACC1")
    dicom(root / "a" / "IM0002", "PAT1", "ACC1")
    dicom(root / "b" / "IM0001", "PAT2", "ACC2")
    dicom(root / "b" / "IM0002", "PAT3", "ACC9")  # not in the CSV
    (root / "b" / "IM0003").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00garbage")  # corrupt
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("AccessionNumber,label\nACC1,fracture\nACC2,normal\n")
    with caplog.at_level(logging.WARNING):
        items = from_dicom_folder(root, labels_csv=csv_path, classes=["normal", "fracture"])
    assert "IM0003" in caplog.text and "ACC9" in caplog.text
    assert len(items) == 3
    by_patient = {i["patient_id"]: i for i in items}
    assert by_patient["PAT1"]["label"] == 1 and by_patient["PAT2"]["label_name"] == "normal"
    assert all(pydicom.uid.UID(i["sop_instance_uid"]).is_valid for i in items)
    assert {"study_uid", "series_uid"} <= set(items[0])
    # build_datalist picks up a CSV keyed by a DICOM attribute inside the folder
    (root / "labels.csv").write_text(csv_path.read_text())
    doc = load_datalist(build_datalist(root, tmp_path / "dl.json", ratios="training=0.5,validation=0.5"))
    assert doc["source_kind"] == "dicom_folder" and doc["labels"] == ["fracture", "normal"]
    check_no_leakage({k: doc[k] for k in ("training", "validation")})
    assert sum(len(doc[k]) for k in ("training", "validation")) == 3


def test_dicom_folder_labels_from_folders_and_build(tmp_path):
    for cls in ("neg", "pos"):
        for p in range(4):
            dicom(tmp_path / cls / f"case{p}" / "1", f"{cls}{p}", f"A{cls}{p}")
            dicom(tmp_path / cls / f"case{p}" / "2", f"{cls}{p}", f"A{cls}{p}")
    items = from_dicom_folder(tmp_path)
    assert {i["label_name"] for i in items} == {"neg", "pos"} and len(items) == 16
    out = build_datalist(tmp_path, tmp_path / "dl.json", ratios={"training": 0.5, "test": 0.5})
    doc = load_datalist(out)
    check_no_leakage({k: doc[k] for k in ("training", "test")})
    assert doc["class_counts"] == {"training": [4, 4], "test": [4, 4]}


# ---------------------------------------------------------------------------------------------
# JSON files and build_datalist


def test_save_load_round_trip(tmp_path):
    inside = png(tmp_path / "data" / "a.png")
    outside = png(tmp_path.parent / f"{tmp_path.name}_outside.png")
    splits = {
        "training": [{"image": str(inside), "label": 1, "patient_id": "data", "label_name": "b"}],
        "test": [{"image": str(outside), "label": np.int64(0)}],
    }
    path = save_datalist(tmp_path / "dl.json", splits, ["a", "b"], name="toy", seed=3)
    raw = json.loads(path.read_text())
    assert raw["training"][0]["image"] == "data/a.png" and raw["test"][0]["image"] == str(outside)
    assert not list(tmp_path.glob(".dl.json.*"))  # no temp file left behind
    doc = load_datalist(path)
    assert doc["training"][0]["image"] == str(inside)
    assert doc["training"][0]["patient_id"] == "data"  # not turned into a path
    assert doc["labels"] == ["a", "b"] and doc["seed"] == 3 and doc["multi_label"] is False
    from monai.data import load_decathlon_datalist  # MONAI takes seconds to import; only this test needs it

    assert load_decathlon_datalist(path, False, "training")[0]["image"] == str(inside)


def test_bad_datalists_name_the_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        load_datalist(bad)
    bad.write_text(json.dumps({"labels": ["a"], "training": [{"image": "x.png", "label": 4}]}))
    with pytest.raises(ValueError, match=r"bad.json: training\[0\] label"):
        load_datalist(bad)
    with pytest.raises(ValueError, match="label must be"):
        save_datalist(tmp_path / "x.json", {"training": [{"image": "a", "label": 2}]}, ["a", "b"])


def test_build_datalist_from_train_test_tree(tmp_path):
    root = tmp_path / "ds"
    for split in ("train", "test"):
        for cls in ("a", "b"):
            for p in range(10):
                for k in range(2):
                    png(root / split / cls / f"{split}_{cls}_p{p}_{k}.png")

    def patient(path):
        return Path(path).stem.rsplit("_", 1)[0]

    out = build_datalist(
        root, tmp_path / "out" / "dl.json", val_fraction=0.2, seed=1, patient_from_name=patient
    )
    doc = load_datalist(out)
    assert {k: len(doc[k]) for k in ("training", "validation", "test")} == {
        "training": 32,
        "validation": 8,
        "test": 40,
    }
    assert all("/test/" in i["image"] for i in doc["test"])
    check_no_leakage({k: doc[k] for k in ("training", "validation", "test")})
    assert doc["class_counts"]["validation"] == [4, 4]
    again = build_datalist(
        root, tmp_path / "out" / "dl2.json", val_fraction=0.2, seed=1, patient_from_name=patient
    )
    assert load_datalist(again)["validation"] == doc["validation"]
    assert build_datalist(out, tmp_path / "unused.json") == out  # an existing datalist is returned as is
    assert not (tmp_path / "unused.json").exists()


def test_build_datalist_unsplit_folder_uses_ratios(tmp_path):
    for cls in ("x", "y"):
        for i in range(20):
            png(tmp_path / "ds" / cls / f"{i}.png")
    doc = load_datalist(
        build_datalist(tmp_path / "ds", tmp_path / "dl.json", ratios="training=0.5,validation=0.25,test=0.25")
    )
    assert doc["class_counts"] == {"training": [10, 10], "validation": [5, 5], "test": [5, 5]}
    assert doc["ratios"] == {"training": 0.5, "validation": 0.25, "test": 0.25}
