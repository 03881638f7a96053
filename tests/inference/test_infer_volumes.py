"""`cit infer` with a 3D bundle (bundles/resnet3d_adrenal) over NIfTI, MHA, NRRD files and a DICOM CT series
from ../shared/data, with the inputs a 3D model cannot take reported row by row."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from infer_helpers import REPO_ROOT, infer_args, png_bytes, read_csv

from toolkit.bundle import write_model_info
from toolkit.cli import main
from toolkit.inference.runner import EXIT_INPUTS_FAILED

BUNDLE = REPO_ROOT / "bundles" / "resnet3d_adrenal"
CLASSES = ["normal", "hyperplasia"]
SIZE = 16


@pytest.fixture(scope="module")
def volume_ckpt(tmp_path_factory) -> Path:
    """Random-init weights of a 3D ResNet-18 for SIZE^3 inputs, with the description training writes."""
    folder = tmp_path_factory.mktemp("ckpt3d")
    info = write_model_info(
        folder,
        {"name": "resnet18", "num_classes": 2, "in_channels": 1, "spatial_dims": 3},
        CLASSES,
        {"image_size": SIZE, "channels": 1, "intensity": "minmax", "spatial_dims": 3},
        bundle_name=BUNDLE.name,
    )
    torch.manual_seed(0)
    torch.save(info.create_network().state_dict(), folder / "model.pt")
    return folder / "model.pt"


@pytest.fixture(scope="module")
def volume_tree(shared_data, tmp_path_factory) -> Path:
    import itk

    root = tmp_path_factory.mktemp("volumes")
    nifti, dicom = shared_data / "nifti", shared_data / "dicom"
    (root / "mri").mkdir()
    for name in ("RAS.nii.gz", "LPS.nii.gz"):
        shutil.copy(nifti / "orientation" / name, root / "mri" / name)
    shutil.copy(nifti / "brain_mri" / "anatomical.nii", root / "mri" / "anatomical.nii")
    ail = itk.imread(str(nifti / "orientation" / "AIL.nii.gz"))  # permuted axes, written by ITK
    itk.imwrite(ail, str(root / "mri" / "AIL.mha"))
    itk.imwrite(ail, str(root / "mri" / "AIL.nrrd"))
    (root / "fmri").mkdir()
    shutil.copy(nifti / "brain_4d" / "example4d.nii.gz", root / "fmri" / "example4d.nii.gz")
    shutil.copytree(dicom / "ct_series_head_16x16", root / "ct" / "head")
    (root / "films").mkdir()
    shutil.copy(next((dicom / "chest_xr").glob("CR-MONO1*")), root / "films" / "chest_cr")
    (root / "films" / "photo.png").write_bytes(png_bytes(1))
    return root


def _run(volume_ckpt, inputs, out):
    return main(infer_args(BUNDLE, volume_ckpt, inputs, out))


def test_a_3d_bundle_predicts_volumes_and_series_and_reports_the_rest(
    volume_ckpt, volume_tree, tmp_path, capsys
):
    out = tmp_path / "out"
    assert _run(volume_ckpt, volume_tree, out) == EXIT_INPUTS_FAILED  # some inputs cannot be volumes
    rows = {r["path"]: r for r in read_csv(out / "predictions.csv")}
    ok = {p for p, r in rows.items() if r["status"] == "ok"}
    series = [p for p in rows if p.startswith("ct/head/[series ")]
    assert len(series) == 1, "the 4 slices of the CT series are one input"
    assert ok == {
        "mri/RAS.nii.gz",
        "mri/LPS.nii.gz",
        "mri/anatomical.nii",
        "mri/AIL.mha",
        "mri/AIL.nrrd",
        *series,
    }
    ct = rows[series[0]]
    assert ct["kind"] == "dicom" and ct["modality"] == "CT" and ct["series_instance_uid"] in series[0]
    assert ct["sop_instance_uid"] == ""  # a series, not one instance
    for row in (rows[p] for p in ok):
        probs = [float(row[f"prob_{c}"]) for c in CLASSES]
        assert (
            sum(probs) == pytest.approx(1.0, abs=1e-5)
            and row["pred_name"] == CLASSES[probs.index(max(probs))]
        )
    # one anatomy stored in three voxel orders and three formats: one prediction
    for other in ("mri/LPS.nii.gz", "mri/AIL.mha", "mri/AIL.nrrd"):
        assert float(rows[other]["prob_normal"]) == pytest.approx(
            float(rows["mri/RAS.nii.gz"]["prob_normal"]), abs=1e-5
        )
    errors = {p: r["reason"] for p, r in rows.items() if r["status"] == "error"}
    assert "4D image (2 volumes" in errors["fmri/example4d.nii.gz"]
    assert "a 2D image (PNG / JPEG" in errors["films/photo.png"]
    [single] = [p for p in errors if p.startswith("films/[series ")]  # a lone CR film
    assert "a single 2D DICOM image (modality CR)" in errors[single]
    assert len(rows) == len(ok) + len(errors)
    assert not any("/work/" in reason or str(tmp_path) in reason for reason in errors.values())

    capsys.readouterr()
    assert _run(volume_ckpt, volume_tree, out) == EXIT_INPUTS_FAILED  # resumed: nothing to do again
    assert f"0 processed now, {len(rows)} done by an earlier run" in capsys.readouterr().err
