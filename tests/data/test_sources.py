"""Every source module returns a SourceItems: the same shape for build_datalist, whatever the format."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from toolkit.data.headers import UnreadableImage, check_image
from toolkit.data.sources import (
    CHESTXRAY14_FINDINGS,
    SourceItems,
    chestxray14_items,
    class_folder_items,
    csv_items,
    dicom_folder_items,
    manifest_items,
    medmnist_items,
)


def _png(path, value=100):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8), value, np.uint8)).save(path)
    return path


def test_class_folders_source(tmp_path):
    _png(tmp_path / "train" / "b" / "1.png")
    _png(tmp_path / "test" / "a" / "2.png")
    found = class_folder_items(tmp_path)
    assert isinstance(found, SourceItems)
    assert (found.kind, found.labels, found.multi_label) == ("class_folders", ["a", "b"], False)
    assert sorted((i["split"], i["label"]) for i in found.items) == [("test", 0), ("training", 1)]


def test_csv_manifest_source(tmp_path):
    _png(tmp_path / "0.png")
    _png(tmp_path / "1.png")
    (tmp_path / "m.csv").write_text("filename,diagnosis\n0.png,x;y\n1.png,y\n")
    found = csv_items(tmp_path / "m.csv", "filename", "diagnosis", multi_label_sep=";")
    assert isinstance(found, SourceItems)
    assert (found.kind, found.labels, found.multi_label) == ("csv", ["x", "y"], True)
    assert [i["label"] for i in found.items] == [[1, 1], [0, 1]]
    guessed = manifest_items(tmp_path / "m.csv")  # column names recognised, single-label
    assert isinstance(guessed, SourceItems) and guessed.labels == ["x;y", "y"]


def test_chestxray14_source(tmp_path):
    _png(tmp_path / "images" / "00000001_000.png")
    (tmp_path / "Data_Entry_2017.csv").write_text(
        "Image Index,Finding Labels,Patient ID\n00000001_000.png,Hernia|Mass,1\n"
    )
    found = chestxray14_items(tmp_path / "Data_Entry_2017.csv")  # images/ beside the CSV
    assert isinstance(found, SourceItems)
    assert (found.kind, found.labels, found.multi_label) == ("chestxray14", CHESTXRAY14_FINDINGS, True)
    [item] = found.items
    assert item["label_name"] == ["Mass", "Hernia"] and item["patient_id"] == "1"


def test_medmnist_source(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {}
    for prefix, n in (("train", 3), ("val", 1), ("test", 2)):
        arrays[f"{prefix}_images"] = rng.integers(0, 255, (n, 8, 8), dtype=np.uint8)
        arrays[f"{prefix}_labels"] = np.array([[k % 2] for k in range(n)], np.uint8)
    np.savez(tmp_path / "toy.npz", **arrays)
    found = medmnist_items(tmp_path / "toy.npz", tmp_path / "out", classes=["neg", "pos"])
    assert isinstance(found, SourceItems)
    assert (found.kind, found.labels, found.multi_label) == ("medmnist", ["neg", "pos"], False)
    assert [i["split"] for i in found.items] == ["training"] * 3 + ["validation"] + ["test"] * 2
    assert found.items[1]["label_name"] == "pos"
    with pytest.raises(ValueError, match="toy.npz has 2 classes but 3 names were given"):
        medmnist_items(tmp_path / "toy.npz", tmp_path / "out", classes=["a", "b", "c"])


def test_dicom_folder_source(tmp_path):
    for cls in ("neg", "pos"):
        (tmp_path / cls).mkdir()
        shutil.copy(get_testdata_file("CT_small.dcm"), tmp_path / cls / "IM0001")  # no extension
    found = dicom_folder_items(tmp_path)
    assert isinstance(found, SourceItems)
    assert (found.kind, found.labels, found.multi_label) == ("dicom_folder", ["neg", "pos"], False)
    assert all(i["patient_id"] and i["sop_instance_uid"] for i in found.items)


def test_unreadable_image_names_file_and_reason(tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png at all")
    with pytest.raises(UnreadableImage, match=r"broken\.png: UnidentifiedImageError"):
        check_image(broken, "raster")
    report = tmp_path / "report.dcm"
    report.write_bytes(b"\0" * 128 + b"DICM")
    with pytest.raises(UnreadableImage, match="no image attributes"):
        check_image(report, "dicom")
