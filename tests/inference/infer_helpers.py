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
    from toolkit.bundle.configs import trained_preprocessing

    train = json.loads((bundle / "configs" / "train.json").read_text())
    info = write_model_info(
        folder,
        network={
            "name": train["model_name"],
            "num_classes": len(CLASS_NAMES),
            "in_channels": train["channels"],
        },
        class_names=CLASS_NAMES,
        preprocessing=trained_preprocessing(bundle, image_size=IMAGE_SIZE),
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


def make_dicom(
    path: Path,
    *,
    study: str,
    series: str,
    index: int,
    photometric: str = "MONOCHROME2",
    frames: int = 1,
    size: int = 40,
    compress_rle: bool = False,
    pixel_data: bool = True,
    seed: int = 0,
    transfer_syntax: str | None = None,
    study_uid: str | None = None,
    patient_name: str = "Doe^Jane",
    patient_id: str = "PAT-SECRET-42",
    modality: str = "CT",
    declared_frames: int | None = None,
    accession: str | None = None,
) -> str:
    """Write a 16-bit CT-like DICOM image; returns its SOPInstanceUID.

    ``study_uid`` replaces the generated StudyInstanceUID as it is (hostile values included);
    ``declared_frames`` writes that NumberOfFrames whatever the pixel data holds."""
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
    ds.StudyInstanceUID, ds.SeriesInstanceUID = (
        study_uid or _uid("study", study),
        _uid("series", study, series),
    )
    ds.PatientName, ds.PatientID = patient_name, patient_id
    ds.PatientBirthDate = "19700101"
    if accession is not None:
        ds.AccessionNumber = accession
    ds.Modality, ds.BodyPartExamined = modality, "HEAD"
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
    if declared_frames is not None:
        ds.NumberOfFrames = declared_frames
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
        make_dicom(
            add(f"pacs/study1/series_m1/img{i}.dcm", "ok"),
            study=1,
            series="m1",
            index=i,
            photometric="MONOCHROME1",
            seed=10 + i,
        )
    make_dicom(
        add("pacs/study2/rle/IM0001", "ok"), study=2, series="rle", index=0, compress_rle=True, seed=20
    )
    make_dicom(
        add("pacs/study2/multiframe/MF0001", "error"), study=2, series="mf", index=0, frames=3, seed=21
    )
    # raster + NIfTI
    Image.fromarray(rng.integers(0, 256, (48, 40), dtype=np.uint8)).save(add("raster/grey.png", "ok"))
    Image.fromarray(rng.integers(0, 256, (36, 44, 3), dtype=np.uint8)).save(add("raster/colour.png", "ok"))
    Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(add("raster/photo.jpg", "ok"))
    for k in range(n_extra_png):
        Image.fromarray(rng.integers(0, 256, (40, 40), dtype=np.uint8)).save(
            add(f"raster/extra/{k:03d}.png", "ok")
        )
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
    nib.save(
        nib.Nifti1Image(np.zeros((2, 3, 4, 5, 6), np.float32), np.eye(4)),
        add("broken/five_d.nii.gz", "error"),
    )
    nib.save(
        nib.Nifti1Image(np.full((16, 16, 4), np.nan, np.float32), np.eye(4)),
        add("broken/nan.nii.gz", "error"),
    )
    add("broken/not_png.png", "error").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 50)
    # not an input at all: no row (counted in the summary)
    (root / "README.txt").write_text("export notes\n")
    (root / "raster" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    hidden = root / ".thumbnails"  # a hidden folder holding an image: counted once, not opened
    hidden.mkdir()
    Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(hidden / "grey.png")
    return expected


def infer_args(bundle: Path, ckpt: Path, inputs: Path, output: Path, *extra: str) -> list[str]:
    """`cit infer` arguments for the tests: tiny images, tiny batches, no progress bar."""
    return [
        "infer",
        "--bundle",
        str(bundle),
        "--ckpt-path",
        str(ckpt),
        "--input",
        str(inputs),
        "--output",
        str(output),
        "--device",
        "cpu",
        "--batch-size",
        "2",
        "--workers",
        "0",
        "--no-progress",
        *extra,
    ]


def read_csv(path: Path) -> list[dict]:
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------------------------------------
# the hostile tree (issue 10): inputs crafted against the outputs, the run, and the privacy of a run

LONG_UID = "1.2.826.0.1.3680043.8.498." + "1" * 38  # 64 characters, a valid UID as folder name
PNG_BOMB_SIDE = 100_000  # a PNG header claiming 100,000 x 100,000 pixels


def png_bytes(seed: int, size: tuple[int, int] = (40, 40)) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def png_bomb() -> bytes:
    """A PNG whose header claims PNG_BOMB_SIDE^2 pixels, with almost no data (a decompression bomb)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", PNG_BOMB_SIDE, PNG_BOMB_SIDE, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def make_deep_folder(root: Path, levels: int = 20, name_length: int = 250) -> Path:
    """``root/deep/<250 chars>/...``: a folder path longer than PATH_MAX (4096), made level by level
    through folder descriptors; listing its deepest folders by path fails (ENAMETOOLONG), even for root.
    Returns ``root/deep``."""
    top = root / "deep"
    top.mkdir(parents=True)
    fd = os.open(top, os.O_RDONLY)
    try:
        for level in range(levels):
            name = f"{level:02d}" + "d" * (name_length - 2)
            os.mkdir(name, dir_fd=fd)
            child = os.open(name, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = child
        with open(os.open("IM.png", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd), "wb") as f:
            f.write(png_bytes(99))
    finally:
        os.close(fd)
    return top


def write_hostile_tree(root: Path, victim: Path, broken_dicom: Path | None = None) -> dict[tuple, str | None]:
    """Inputs crafted against `cit infer` below ``root``; ``victim``: a folder outside ``root`` (and outside
    the output) that crafted StudyInstanceUIDs aim at. Returns ``{(path as shown, frame): expected status}``
    (None: any status, for the real broken files of ``broken_dicom``). To be run with
    ``--frames each --gradcam --dicom-sr``. The folder longer than PATH_MAX is made by make_deep_folder."""
    import shutil

    expected: dict[tuple, str | None] = {}

    def add(rel: str, status: str | None, frame: int | None = None, shown: str | None = None) -> Path:
        expected[(shown or rel, frame)] = status
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    # 1. StudyInstanceUIDs that would name an SR file outside the output, or sub-folders of sr/
    victim.mkdir(parents=True, exist_ok=True)
    make_dicom(add("uids/escape/IM1", "ok"), study="e", series="e", index=0, study_uid="../../escaped")
    make_dicom(
        add("uids/absolute/IM1", "ok"), study="a", series="a", index=0, study_uid=str(victim / "victim")
    )
    make_dicom(add("uids/slash/IM1", "ok"), study="s", series="s", index=0, study_uid="1.2.3/4.5.6")
    make_dicom(add("uids/long/IM1", "ok"), study="l", series="l", index=0, study_uid="1." * 200 + "1")
    # 2. links and special files: one row each, never a stop
    (root / "links").mkdir()
    os.symlink("loop.dcm", add("links/loop.dcm", "error"))
    os.symlink("LOOP", add("links/LOOP", "error"))
    os.symlink(victim / "does-not-exist.dcm", add("links/dangling.dcm", "error"))
    os.symlink(".", add("links/here", "skipped", shown="links/here/"))  # a folder link (a loop if followed)
    os.symlink(victim, add("links/outside", "skipped", shown="links/outside/"))
    os.mkfifo(add("special/fifo.dcm", "error"))
    # 3. overlay names: five UID folders (> 255 bytes joined), a 250-character file name, a/b vs a__b
    deep = "long/" + "/".join([LONG_UID] * 5)
    add(f"{deep}/IM0001.png", "ok").write_bytes(png_bytes(1))
    add("long/" + "n" * 246 + ".png", "ok").write_bytes(png_bytes(2))
    add("collide/a/b.png", "ok").write_bytes(png_bytes(3))
    add("collide/a__b.png", "ok").write_bytes(png_bytes(4))
    # 5. declared frame counts
    make_dicom(add("frames/claims_100000", "error"), study="f", series="f", index=0, declared_frames=100_000)
    make_dicom(
        add("frames/rle_claims_50", "error"),
        study="f",
        series="r",
        index=1,
        compress_rle=True,
        declared_frames=50,
    )
    make_dicom(root / "frames" / "three", study="f", series="t", index=2, frames=3)
    for f in range(3):
        expected[("frames/three", f)] = "ok"
    # 6. formulas in file names and DICOM values
    for name in ("=1+1.png", "+SUM(1).png", "-2+3.png", "@A1.png"):
        add(f"formula/{name}", "ok").write_bytes(png_bytes(5))
    make_dicom(add("formula/IM_modality", "ok"), study="m", series="m", index=0, modality="=2+5")
    # file names that are not UTF-8 or hold control characters
    (root / "names").mkdir()
    (root / "names").joinpath(os.fsdecode(b"bad\xff.png")).write_bytes(png_bytes(6))
    expected[("names/bad\\xff.png", None)] = "ok"
    (root / "names" / "new\nline.png").write_bytes(png_bytes(7))
    expected[("names/new\\nline.png", None)] = "ok"
    # assorted broken inputs
    add("broken/bomb.png", "error").write_bytes(png_bomb())
    add("broken/zero.dcm", "error").write_bytes(b"")
    make_sr(add("broken/report_sr.dcm", "error"))
    # 8. a folder named after the patient
    make_dicom(
        add("DOE_JOHN_MRN123456/scan0.dcm", "ok"),
        study="p",
        series="p",
        index=0,
        patient_name="Doe^John",
        patient_id="MRN123456",
        accession="ACC-77-SECRET",
    )
    # 7. an earlier run's output folder inside the input: its results are not inputs, the rest is
    old = root / "old_results"
    for rel in ("gradcam/0123456789abcdef_x.png", "predictions.csv", "parts/predictions.part0.jsonl"):
        (old / rel).parent.mkdir(parents=True, exist_ok=True)
        (old / rel).write_bytes(png_bytes(8) if rel.endswith(".png") else b"x\n")
    make_dicom(old / "sr" / "1.2.3.dcm", study="o", series="o", index=0)
    (old / ".cit-infer.lock").write_text("")
    add("old_results/mine.png", "ok").write_bytes(png_bytes(9))
    (root / "README.txt").write_text("not an input\n")
    # the real broken files of the shared data
    if broken_dicom is not None:
        for path in sorted(broken_dicom.iterdir()):
            shutil.copyfile(path, add(f"real_broken/{path.name}", None))
    return expected


def snapshot(root: Path, skip: Path | None = None) -> dict[str, tuple]:
    """``{path: (kind, size, mtime_ns, link target)}`` of everything below ``root`` except ``skip``."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root, onerror=lambda exc: None):
        if skip is not None:
            dirnames[:] = [d for d in dirnames if Path(dirpath, d) != skip]
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            if skip is not None and path == skip:
                continue
            try:
                st = path.lstat()
                target = os.readlink(path) if path.is_symlink() else None
                found[str(path)] = (st.st_mode, st.st_size, st.st_mtime_ns, target)
            except OSError as exc:  # beyond PATH_MAX: the same before and after
                found[str(path)] = (exc.errno,)
    return found


def every_output_text(out: Path) -> str:
    """Names and contents of every file below ``out`` as one text (bytes decoded leniently)."""
    parts = []
    for path in sorted(out.rglob("*")):
        parts.append(str(path.relative_to(out)))
        if path.is_file():
            parts.append(path.read_bytes().decode("latin-1"))
    return "\n".join(parts)
