"""`cit audit`: planted leakage is found pair by pair, a clean split is clean, the fix holds."""

from __future__ import annotations

import csv
import json
import shutil
from collections import Counter
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from toolkit.cli import main as cit
from toolkit.cli.audit import read_image
from toolkit.data.audit import describe_image, near_duplicate_pairs, run_audit
from toolkit.data.datalist import load_datalist, save_datalist

LABELS = ["benign", "malignant"]


def _pattern(rng, size=64) -> np.ndarray:
    """A smooth random image: distinct patterns have unrelated perceptual hashes."""
    coarse = Image.fromarray((rng.random((6, 6)) * 255).astype(np.uint8))
    return np.asarray(coarse.resize((size, size), Image.Resampling.BICUBIC))


def _write_dicom(path: Path, pixels: np.ndarray, patient: str) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = "CT", patient
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = (pixels.astype(np.uint16) * 16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def _clean_set(root: Path, seed: int = 0) -> dict[str, list[dict]]:
    """12 patients x 2 distinct images (PNG, one DICOM each for training patients), split by patient."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    splits = {"training": [], "validation": [], "test": []}
    for p in range(12):
        split = "training" if p < 8 else "validation" if p < 10 else "test"
        for k in range(2):
            pixels = _pattern(rng)
            if split == "training" and k == 1:
                path = root / f"p{p:02d}_{k}.dcm"
                _write_dicom(path, pixels, f"P{p:02d}")
            else:
                path = root / f"p{p:02d}_{k}.png"
                Image.fromarray(pixels).save(path)
            splits[split].append({"image": str(path), "label": p % 2, "patient_id": f"P{p:02d}"})
    return splits


def test_clean_split_has_no_findings(tmp_path):
    datalist = save_datalist(tmp_path / "clean.json", _clean_set(tmp_path / "img"), LABELS)
    report = run_audit(datalist, tmp_path / "audit", read_image)
    leak = report["leakage"]
    assert not leak["found"]
    assert leak["shared_patients"] == [] and leak["exact_duplicates"] == [] and leak["near_duplicates"] == []
    assert report["within_split"] == {} and report["unreadable"] == []
    assert report["class_balance"]["training"] == {"benign": 8, "malignant": 8}
    stats = report["image_stats"]
    assert stats["format"] == {"PNG": 16, "DICOM": 8}
    assert stats["modality"] == {"unknown": 16, "CT": 8}
    assert stats["photometric"] == {"L": 16, "MONOCHROME2": 8}
    assert stats["bit_depth"] == {"8": 16, "12": 8} and stats["size"] == {"64x64": 24}
    assert "No leakage found" in (tmp_path / "audit" / "audit.md").read_text()
    assert cit(["audit", "--datalist", str(datalist), "--out-dir", str(tmp_path / "cli"), "--strict"]) == 0


@pytest.fixture()
def leaky(tmp_path) -> Path:
    """The clean set plus a planted exact copy, a flipped + re-windowed copy, a shared patient and a
    corrupt file."""
    splits = _clean_set(tmp_path / "img")
    train = splits["training"]
    exact = tmp_path / "img" / "copy_of_p00_0.png"
    shutil.copy(train[0]["image"], exact)
    splits["test"].append({"image": str(exact), "label": 0, "patient_id": "P90"})
    flipped = np.fliplr(np.asarray(Image.open(train[2]["image"]), dtype=float)) * 0.8 + 30
    near = tmp_path / "img" / "flipped_p01_0.png"
    Image.fromarray(flipped.astype(np.uint8)).save(near)
    splits["validation"].append({"image": str(near), "label": 1, "patient_id": "P91"})
    other = tmp_path / "img" / "p03_again.png"
    Image.fromarray(_pattern(np.random.default_rng(7))).save(other)
    splits["test"].append({"image": str(other), "label": 1, "patient_id": "P03"})  # P03 is in training
    broken = tmp_path / "img" / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    splits["training"].append({"image": str(broken), "label": 0, "patient_id": "P50"})
    return save_datalist(tmp_path / "leaky.json", splits, LABELS)


def test_planted_leakage_is_found_pair_by_pair(leaky, tmp_path):
    report = run_audit(leaky, tmp_path / "audit", read_image)
    leak = report["leakage"]
    assert leak["found"]
    assert leak["shared_patients"] == [{"patient_id": "P03", "splits": {"training": 2, "test": 1}}]
    [exact] = leak["exact_duplicates"]
    assert {Path(exact["a"]["image"]).name, Path(exact["b"]["image"]).name} == {
        "p00_0.png",
        "copy_of_p00_0.png",
    }
    assert exact["kind"] == "identical file"
    [near] = leak["near_duplicates"]
    assert {Path(near["a"]["image"]).name, Path(near["b"]["image"]).name} == {
        "p01_0.png",
        "flipped_p01_0.png",
    }
    assert near["transform"].startswith("flip") and near["hamming"] <= 6 and near["hamming_256"] <= 32
    assert leak["counts_by_split_pair"] == {
        "training|test": {"exact_duplicate_pairs": 1, "shared_patients": 1},
        "training|validation": {"near_duplicate_pairs": 1},
    }
    [bad] = report["unreadable"]
    assert bad["image"].endswith("broken.png") and bad["error"]
    # without rotation / flip matching the mirrored copy goes unnoticed
    plain = run_audit(leaky, tmp_path / "plain", read_image, transforms=False, write_regrouped=False)
    assert plain["leakage"]["near_duplicates"] == []
    md = (tmp_path / "audit" / "audit.md").read_text()
    assert "LEAKAGE FOUND" in md and "copy_of_p00_0.png" in md and "P03" in md and "broken.png" in md


def test_regrouped_datalist_keeps_groups_together(leaky, tmp_path):
    report = run_audit(leaky, tmp_path / "audit", read_image, seed=1)
    regrouped = Path(report["regrouped_datalist"])
    doc = load_datalist(regrouped)
    assert sum(len(doc[s]) for s in ("training", "validation", "test")) == report["num_items"]
    again = run_audit(regrouped, tmp_path / "again", read_image, write_regrouped=False)
    assert not again["leakage"]["found"], again["leakage"]["counts_by_split_pair"]


def test_regrouping_moves_only_the_grouped_items(leaky, tmp_path):
    """The fix keeps every image where it was except those of a patient or duplicate cluster that
    spans splits, which move whole into the split holding most of the cluster."""
    report = run_audit(leaky, tmp_path / "audit", read_image)
    before = {i["image"]: s for s in ("training", "validation", "test") for i in load_datalist(leaky)[s]}
    doc = load_datalist(report["regrouped_datalist"])
    after = {i["image"]: s for s in ("training", "validation", "test") for i in doc[s]}
    moved = {Path(k).name: (before[k], after[k]) for k in before if before[k] != after[k]}
    # P03's test image joins P03's 2 training images; the exact and the flipped copy join their
    # originals, whose patients have 2 images each in training
    assert moved == {
        "p03_again.png": ("test", "training"),
        "copy_of_p00_0.png": ("test", "training"),
        "flipped_p01_0.png": ("validation", "training"),
    }
    assert report["regrouped_moved"] == 3
    moved_items = [i for s in ("training", "validation", "test") for i in doc[s] if "audit_moved_from" in i]
    assert sorted(Path(i["image"]).name for i in moved_items) == sorted(moved)
    assert "It moves 3 image(s)" in (tmp_path / "audit" / "audit.md").read_text()


def test_strict_exit_code(leaky, tmp_path, capsys):
    assert cit(["audit", "--datalist", str(leaky), "--out-dir", str(tmp_path / "a"), "--strict"]) == 1
    assert "LEAKAGE FOUND" in capsys.readouterr().out
    assert cit(["audit", "--datalist", str(leaky), "--out-dir", str(tmp_path / "b"), "--no-regroup"]) == 0
    saved = json.loads((tmp_path / "b" / "audit.json").read_text())
    assert saved["leakage"]["found"] and "regrouped_datalist" not in saved


@pytest.mark.parametrize("threshold", [0, 4, 6, 12, 30])
def test_near_duplicate_pairs_match_brute_force(threshold):
    rng = np.random.default_rng(3)
    hashes = rng.integers(0, 2**64 - 1, size=(300, 8), dtype=np.uint64)
    hashes[::7, 0] = hashes[0, 0]  # plant clusters of equal and 1-bit-apart hashes
    hashes[1::7, 0] = hashes[1, 0] ^ np.uint64(1)
    for k in range(60):  # and copies a few bits away under some transform
        noise = sum(1 << int(b) for b in rng.choice(64, size=k % (threshold + 3), replace=False))
        hashes[(k * 5 + 3) % 300, k % 8] = hashes[(k * 11 + 2) % 300, 0] ^ np.uint64(noise)
    found = near_duplicate_pairs(hashes, threshold=threshold)
    expected = []
    for i in range(300):
        for j in range(i + 1, 300):
            distances = [bin(int(hashes[i, 0]) ^ int(h)).count("1") for h in hashes[j]]
            if min(distances) <= threshold:
                expected.append((i, j, min(distances), distances.index(min(distances))))
    assert found == expected and len(found) > 100


def test_volumes_get_exact_checks_only(tmp_path):
    rng = np.random.default_rng(5)
    volume = (rng.random((12, 12, 8)) * 100).astype(np.int16)
    paths = []
    for name, data in (("a", volume), ("b", volume), ("c", volume[::-1].copy())):
        paths.append(tmp_path / f"{name}.nii.gz")
        nib.save(nib.Nifti1Image(data, np.eye(4) * (2 if name == "b" else 1)), paths[-1])
    splits = {
        "training": [{"image": str(paths[0]), "label": 0, "patient_id": "A"}],
        "test": [
            {"image": str(p), "label": 1, "patient_id": n} for p, n in ((paths[1], "B"), (paths[2], "C"))
        ],
    }
    datalist = save_datalist(tmp_path / "vol.json", splits, LABELS)
    report = run_audit(datalist, tmp_path / "audit", read_image, write_regrouped=False)
    [exact] = report["leakage"]["exact_duplicates"]
    assert exact["kind"] == "identical pixels"  # same voxels, different header (spacing)
    assert {Path(exact["a"]["image"]).name, Path(exact["b"]["image"]).name} == {"a.nii.gz", "b.nii.gz"}
    assert report["leakage"]["near_duplicates"] == []  # the flipped volume is not matched
    assert report["settings"]["volumes_checked_for_exact_duplicates_only"] == 3
    assert report["image_stats"]["size"] == {"12x12x8": 3} and report["image_stats"]["format"] == {"NIfTI": 3}


def test_real_dicoms_broken_ones_reported_and_skipped(shared_data, tmp_path):
    """The shared data's 16 broken DICOM files are listed with reasons; readable ones are
    described with the modality / photometric / bit depth of their headers."""
    with open(shared_data / "dicom" / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    broken = [r for r in rows if r["file"].startswith("broken/")]
    good = [
        r
        for r in rows
        if r["pydicom_decode"].startswith("ok")
        and r["frames"] == "1"
        and int(r["bytes"]) < 120_000
        and not r["file"].startswith("broken/")
    ][:6]
    items = [
        {"image": str(shared_data / "dicom" / r["file"]), "label": n % 2, "patient_id": f"X{n}"}
        for n, r in enumerate(broken + good)
    ]
    datalist = save_datalist(tmp_path / "dicom.json", {"training": items[::2], "test": items[1::2]}, LABELS)
    report = run_audit(datalist, tmp_path / "audit", read_image, write_regrouped=False)
    unreadable = {Path(u["image"]).name: u["error"] for u in report["unreadable"]}
    assert set(unreadable) == {Path(r["file"]).name for r in broken}
    assert all(name in error for name, error in unreadable.items())  # each reason names its file
    stats = report["image_stats"]
    assert sum(stats["format"].values()) == len(good) == stats["format"]["DICOM"]
    assert stats["modality"] == dict(Counter(r["modality"] for r in good))
    assert stats["photometric"] == dict(Counter(r["photometric"] for r in good))
    assert stats["bit_depth"] == dict(Counter(r["bits_stored"] for r in good))


def test_read_image_is_the_callers_and_only_bad_input_is_skipped(tmp_path):
    """The audit decodes with the function it is given; a file that function rejects (OSError /
    ValueError) becomes an error row, while a bug (any other exception) surfaces."""
    path = tmp_path / "a.png"
    Image.fromarray(_pattern(np.random.default_rng(0))).save(path)
    info = describe_image(path, lambda p: np.asarray(Image.open(p)))
    assert info["format"] == "PNG" and info["size"] == "64x64" and len(info["phash"]) == 8

    def rejects(p):
        raise ValueError(f"{p}: not today")

    assert describe_image(path, rejects)["error"] == f"ValueError: {path}: not today"

    def buggy(p):
        raise TypeError("a bug, not a bad file")

    with pytest.raises(TypeError, match="a bug, not a bad file"):
        describe_image(path, buggy)
