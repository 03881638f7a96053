"""The synthetic demo data: real DICOM attributes, PNGs, patient-level labels, idempotence."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.pixels import apply_modality_lut

from toolkit.cli import main
from toolkit.data import check_no_leakage, load_datalist, make_synthetic_dataset


def test_synthetic_dataset(tmp_path):
    path = make_synthetic_dataset(tmp_path, n_patients=9, images_per_patient=4, image_size=48, seed=3)
    doc = load_datalist(path)
    items = [i for k in ("training", "validation", "test") for i in doc[k]]
    assert len(items) == 36 and doc["labels"] == ["glioma", "meningioma", "pituitary"]
    assert all(doc[k] for k in ("training", "validation", "test"))
    check_no_leakage({k: doc[k] for k in ("training", "validation", "test")})
    per_patient = {}
    for item in items:
        per_patient.setdefault(item["patient_id"], set()).add(item["label"])
    assert all(len(labels) == 1 for labels in per_patient.values())

    dicoms = [i for i in items if i["image"].endswith(".dcm")]
    pngs = [i for i in items if i["image"].endswith(".png")]
    assert dicoms and pngs
    headers = [pydicom.dcmread(i["image"]) for i in dicoms]
    assert {d.PhotometricInterpretation for d in headers} == {"MONOCHROME1", "MONOCHROME2"}
    assert {int(d.BitsStored) for d in headers} == {12, 16}
    assert {d.Modality for d in headers} == {"CT", "MR"}
    sops = [d.SOPInstanceUID for d in headers]
    assert len(set(sops)) == len(sops)
    for d, item in zip(headers, dicoms, strict=True):
        assert d.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert d.file_meta.MediaStorageSOPInstanceUID == d.SOPInstanceUID == item["sop_instance_uid"]
        for uid in (d.SOPInstanceUID, d.StudyInstanceUID, d.SeriesInstanceUID):
            assert pydicom.uid.UID(uid).is_valid
        assert d.PatientID == item["patient_id"] and str(d.PatientName) == f"SYNTH^{item['patient_id']}"
        pixels = d.pixel_array
        assert pixels.shape == (48, 48) and pixels.max() < 2 ** int(d.BitsStored)
        if d.Modality == "CT":
            assert "RescaleSlope" in d and "WindowCenter" in d
            hu = apply_modality_lut(pixels, d)
            assert hu.min() <= -900 and 0 < np.median(hu[20:28, 20:28]) < 120  # air and brain in HU
    # MONOCHROME1 stores inverted values: background air is the maximum stored value
    mono1 = next(d for d in headers if d.PhotometricInterpretation == "MONOCHROME1")
    assert mono1.pixel_array[0, 0] == 2 ** int(mono1.BitsStored) - 1
    modes = {Image.open(i["image"]).mode for i in pngs}
    assert "L" in modes and modes & {"I;16", "I"}

    # idempotent: same parameters return the same file untouched; other parameters rewrite
    mtime = Path(path).stat().st_mtime_ns
    assert make_synthetic_dataset(tmp_path, n_patients=9, images_per_patient=4, image_size=48, seed=3) == path
    assert Path(path).stat().st_mtime_ns == mtime
    make_synthetic_dataset(tmp_path, n_patients=3, images_per_patient=2, image_size=48, seed=4)
    assert load_datalist(path)["generator"]["seed"] == 4
    assert len(list((tmp_path / "images").rglob("*.*"))) == 6  # the earlier files are gone


def test_cli_synth_and_datalist(tmp_path, capsys):
    args = [
        "synth",
        str(tmp_path / "s"),
        "--n-patients",
        "6",
        "--images-per-patient",
        "2",
        "--image-size",
        "32",
    ]
    assert main(args) == 0
    assert "glioma" in capsys.readouterr().out
    for cls in ("a", "b"):
        for n in range(4):
            folder = tmp_path / "tree" / cls
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.zeros((8, 8), np.uint8)).save(folder / f"{n}.png")
    out = tmp_path / "dl.json"
    assert (
        main(
            ["datalist", str(tmp_path / "tree"), "--out", str(out), "--ratios", "training=0.5,validation=0.5"]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert str(out) in printed and "validation" in printed
    assert load_datalist(out)["class_counts"] == {"training": [2, 2], "validation": [2, 2]}
