"""`cit infer` gives the same predictions as the bundle's own `inference` run on the same inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from infer_helpers import IMAGE_SIZE, infer_args, make_dicom, read_csv

from toolkit.cli import main
from toolkit.inference.runner import EXIT_OK


def _valid_inputs(root: Path) -> None:
    import nibabel as nib
    from PIL import Image

    rng = np.random.default_rng(1)
    for i in range(2):
        make_dicom(root / "dicom" / f"IM{i}", study=1, series="a", index=i, seed=100 + i)
    make_dicom(
        root / "dicom" / "mono1.dcm", study=1, series="b", index=0, photometric="MONOCHROME1", seed=110
    )
    make_dicom(root / "dicom" / "rle", study=1, series="c", index=0, compress_rle=True, seed=120)
    Image.fromarray(rng.integers(0, 256, (50, 30), dtype=np.uint8)).save(root / "grey.png")
    Image.fromarray(rng.integers(0, 256, (30, 50, 3), dtype=np.uint8)).save(root / "colour.jpg")
    nib.save(nib.Nifti1Image(rng.normal(size=(20, 22, 3)).astype(np.float32), np.eye(4)), root / "vol.nii.gz")


def test_same_predictions_as_monai_bundle_run_inference(bundle_dir, tiny_ckpt, tmp_path):
    from monai.bundle import run

    inputs = tmp_path / "in"
    _valid_inputs(inputs)
    # `python -m monai.bundle run inference --config_file ... --dataset_dir ...` calls this function
    run(
        "inference",
        config_file=str(bundle_dir / "configs" / "inference.json"),
        meta_file=str(bundle_dir / "configs" / "metadata.json"),
        bundle_root=str(bundle_dir),
        dataset_dir=str(inputs),
        ckpt_path=str(tiny_ckpt),
        output_dir=str(tmp_path / "bundle_out"),
        image_size=IMAGE_SIZE,
    )
    theirs = {
        Path(r["image"]).resolve(): r
        for r in read_csv(tmp_path / "bundle_out" / "inference" / "predictions.csv")
    }

    assert main(infer_args(bundle_dir, tiny_ckpt, inputs, tmp_path / "ours", "--batch-size", "3")) == EXIT_OK
    ours = {(inputs / r["path"]).resolve(): r for r in read_csv(tmp_path / "ours" / "predictions.csv")}

    assert set(ours) == set(theirs) and len(ours) == 7
    class_names = [k[len("prob_") :] for k in next(iter(theirs.values())) if k.startswith("prob_")]
    for path, mine in ours.items():
        other = theirs[path]
        assert mine["status"] == "ok"
        assert (mine["pred"], mine["pred_name"]) == (other["pred"], other["pred_name"]), path
        np.testing.assert_allclose(
            [float(mine[f"prob_{c}"]) for c in class_names],
            [float(other[f"prob_{c}"]) for c in class_names],
            atol=2e-6,
            err_msg=str(path),
        )
