"""Helpers for the `cit infer` tests. Inputs: a folder tree of real files (written with pydicom, Pillow,
nibabel) holding valid images and one of every kind of broken input, plus a tiny checkpoint
for the real bundle bundles/resnet18_brain_ct (random-init weights: the tests check plumbing,
not accuracy)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[2]
# CIT_INFER_TEST_BUNDLE: run these tests against another copy of the bundle (default: the real one)
BUNDLE = Path(os.environ.get("CIT_INFER_TEST_BUNDLE", REPO_ROOT / "bundles" / "resnet18_brain_ct"))
IMAGE_SIZE = 32  # tiny network input for tests (recorded in the tiny checkpoint's model description)


def subprocess_env() -> dict:
    """Environment for `cit` subprocesses: one torch thread, the repo importable."""
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", CIT_TEST_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


PYTHON = sys.executable
CLASS_NAMES = ["glioma", "meningioma", "pituitary"]


def write_tiny_checkpoint(bundle: Path, folder: Path, seed: int = 0) -> Path:
    """``folder/model.pt``: random-init weights of the bundle's architecture (``model_name`` and
    ``channels`` of its train.json) for IMAGE_SIZE inputs, with ``folder/model_info.json`` as training
    writes it. Returns the weights' path."""
    import json

    import torch

    from toolkit.bundle import write_model_info

    train = json.loads((bundle / "configs" / "train.json").read_text())
    info = write_model_info(
        folder,
        network={"name": train["model_name"], "num_classes": len(CLASS_NAMES), "in_channels": train["channels"]},
        class_names=CLASS_NAMES,
        preprocessing={"image_size": IMAGE_SIZE, "reader_max_size": IMAGE_SIZE, "channels": train["channels"],
                       "intensity": train["intensity"]},
        bundle_name=bundle.name,
    )
    torch.manual_seed(seed)
    torch.save(info.create_network().state_dict(), folder / "model.pt")
    return folder / "model.pt"


# ---------------------------------------------------------------------------------------------
# DICOM writing


def _uid(*parts) -> str:
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=[str(p) for p in parts])


def make_dicom(path: Path, *, study: str, series: str, index: int, photometric: str = "MONOCHROME2",
               frames: int = 1, size: int = 40, compress_rle: bool = False, pixel_data: bool = True,
               seed: int = 0, transfer_syntax: str | None = None) -> str:
    """Write a 16-bit CT-like DICOM image; returns its SOPInstanceUID."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, RLELossless

    rng = np.random.default_rng(seed)
    sop_uid = _uid("sop", study, series, index, path.name)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop_uid
    ds.StudyInstanceUID, ds.SeriesInstanceUID = _uid("study", study), _uid("series", study, series)
    ds.PatientName, ds.PatientID = "Doe^Jane", "PAT-SECRET-42"
    ds.Modality, ds.BodyPartExamined = "CT", "HEAD"
    ds.InstanceNumber, ds.SeriesNumber = index + 1, 1
    ds.ImagePositionPatient = [0.0, 0.0, float(index)]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing = [0.5, 0.5]
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    if frames > 1:
        ds.NumberOfFrames = frames
    if pixel_data:
        shape = (frames, size, size) if frames > 1 else (size, size)
        ds.PixelData = rng.integers(0, 4096, size=shape, dtype=np.uint16).tobytes()
    if compress_rle:
        ds.compress(RLELossless)
    if transfer_syntax is not None:
        from pydicom.encaps import encapsulate

        ds.file_meta.TransferSyntaxUID = transfer_syntax
        ds.PixelData = encapsulate([b"\x00\x01" * 64])
        ds["PixelData"].VR = "OB"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return sop_uid


def make_sr(path: Path) -> None:
    """A Basic Text SR: a valid DICOM object that is not an image."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import BasicTextSRStorage, ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = BasicTextSRStorage
    meta.MediaStorageSOPInstanceUID = _uid("sr", path.name)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = BasicTextSRStorage, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = _uid("study", "sr"), _uid("series", "sr")
    ds.Modality = "SR"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


# ---------------------------------------------------------------------------------------------
# the tree


def write_input_tree(root: Path, n_extra_png: int = 0) -> dict[str, str]:
    """Write valid and broken inputs below ``root``; returns {relative path: expected status}.

    Multi-frame DICOM is an ``error`` with the default ``--frames reject``.
    """
    import nibabel as nib
    from PIL import Image
    from pydicom.uid import MPEG2MPML

    rng = np.random.default_rng(0)
    expected: dict[str, str] = {}

    def add(rel: str, status: str) -> Path:
        expected[rel] = status
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    # valid DICOM: two studies, three series, MONOCHROME2 (no extension, PACS style) and MONOCHROME1
    for i in range(3):
        make_dicom(add(f"pacs/study1/series_m2/IM{i:04d}", "ok"), study=1, series="m2", index=i, seed=i)
    for i in range(2):
        make_dicom(add(f"pacs/study1/series_m1/img{i}.dcm", "ok"), study=1, series="m1", index=i,
                   photometric="MONOCHROME1", seed=10 + i)
    make_dicom(add("pacs/study2/rle/IM0001", "ok"), study=2, series="rle", index=0, compress_rle=True, seed=20)
    make_dicom(add("pacs/study2/multiframe/MF0001", "error"), study=2, series="mf", index=0, frames=3, seed=21)
    # raster + NIfTI
    Image.fromarray(rng.integers(0, 256, (48, 40), dtype=np.uint8)).save(add("raster/grey.png", "ok"))
    Image.fromarray(rng.integers(0, 256, (36, 44, 3), dtype=np.uint8)).save(add("raster/colour.png", "ok"))
    Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(add("raster/photo.jpg", "ok"))
    for k in range(n_extra_png):
        Image.fromarray(rng.integers(0, 256, (40, 40), dtype=np.uint8)).save(add(f"raster/extra/{k:03d}.png", "ok"))
    vol = rng.normal(size=(24, 24, 5)).astype(np.float32)
    nib.save(nib.Nifti1Image(vol, np.eye(4)), add("nifti/brain.nii.gz", "ok"))

    # broken inputs: every kind gets exactly one error row
    add("broken/garbage.dcm", "error").write_bytes(rng.integers(0, 256, 3000, dtype=np.uint8).tobytes())
    add("broken/notes.dcm", "error").write_text("this is a text file, not DICOM\n" * 20)
    add("broken/empty.dcm", "error").write_bytes(b"")
    add("broken/EMPTY0001", "error").write_bytes(b"")
    full = root / "broken" / "_full.tmp"
    make_dicom(full, study=3, series="t", index=0, size=64, seed=30)
    data = full.read_bytes()
    add("broken/truncated.dcm", "error").write_bytes(data[: len(data) - 3000])
    full.unlink()
    make_sr(add("broken/report_sr.dcm", "error"))
    make_dicom(add("broken/mpeg2.dcm", "error"), study=3, series="u", index=0, transfer_syntax=MPEG2MPML)
    make_dicom(add("broken/no_pixels.dcm", "error"), study=3, series="p", index=0, pixel_data=False)
    nib.save(nib.Nifti1Image(np.zeros((2, 3, 4, 5, 6), np.float32), np.eye(4)), add("broken/five_d.nii.gz", "error"))
    nib.save(nib.Nifti1Image(np.full((16, 16, 4), np.nan, np.float32), np.eye(4)), add("broken/nan.nii.gz", "error"))
    add("broken/not_png.png", "error").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 50)
    # not an input at all: no row
    (root / "README.txt").write_text("export notes\n")
    return expected


def infer_args(bundle: Path, ckpt: Path, inputs: Path, output: Path, *extra: str) -> list[str]:
    """`cit infer` arguments for the tests: tiny images, tiny batches, no progress bar."""
    return ["infer", "--bundle", str(bundle), "--ckpt-path", str(ckpt), "--input", str(inputs),
            "--output", str(output), "--device", "cpu", "--batch-size", "2", "--workers", "0",
            "--no-progress", *extra]


def read_csv(path: Path) -> list[dict]:
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))
