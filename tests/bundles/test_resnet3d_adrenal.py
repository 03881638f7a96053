"""End to end: the 3D ResNet-18 adrenal bundle trains on its synthetic 3D volumes, evaluates, and `cit infer`
runs it over NIfTI volumes and a real DICOM CT series.

Runs as users do (`python -m monai.bundle run ...` in a subprocess): 16^3 inputs, 12 synthetic patients, one
epoch, random initialisation, outputs under the test's tmp folder.
"""

import csv
import json
import shutil
import subprocess
import sys

import pytest

from tests.bundles.bundle_helpers import REPO_ROOT, run_bundle, verify_bundle
from toolkit.cli import main
from toolkit.data import load_datalist

BUNDLE = "resnet3d_adrenal"
CLASSES = ["normal", "hyperplasia"]
TINY = {"image_size": 16, "batch_size": 4, "split#synthetic#n_patients": 12, "split#synthetic#image_size": 20}


@pytest.fixture(scope="module")
def trained(module_tmp):
    tmp = module_tmp("bundle3d")
    run_bundle(BUNDLE, "training", "train", tmp, max_epochs=1, **TINY)
    return tmp


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_training_records_the_3d_model_and_its_preprocessing(trained):
    info = json.loads((trained / "models" / "model_info.json").read_text())
    assert info["network"] == {"name": "resnet18", "num_classes": 2, "in_channels": 1, "spatial_dims": 3}
    assert info["preprocessing"]["spatial_dims"] == 3 and info["preprocessing"]["image_size"] == 16
    assert info["preprocessing"]["fit"] == "resize" and "spacing" not in info["preprocessing"]  # none set
    assert info["class_names"] == CLASSES
    history = _rows(trained / "output" / "train" / "training_history.csv")
    assert [int(r["epoch"]) for r in history] == [1] and float(history[0]["train_loss"]) > 0
    split = load_datalist(trained / "output" / "datalist.json")
    assert all(i["image"].endswith(".nii.gz") for k in ("training", "test") for i in split[k])


@pytest.mark.slow
def test_evaluation_and_cit_infer_give_the_same_probabilities(trained, shared_data, tmp_path, capsys):
    run_bundle(BUNDLE, "evaluating", "evaluate", trained)  # nothing repeated from training
    evaluated = {r["image"]: r for r in _rows(trained / "output" / "eval" / "predictions.csv")}
    test_items = load_datalist(trained / "output" / "datalist.json")["test"]
    assert sorted(evaluated) == sorted(i["image"] for i in test_items)

    folder = tmp_path / "study"
    for n, item in enumerate(test_items):
        (folder / "volumes").mkdir(parents=True, exist_ok=True)
        shutil.copy(item["image"], folder / "volumes" / f"case{n}.nii.gz")
    shutil.copytree(shared_data / "dicom" / "ct_series_head_16x16", folder / "ct")
    out = tmp_path / "out"
    ckpt = trained / "models" / "model.pt"
    args = [
        "infer",
        "--bundle",
        str(REPO_ROOT / "bundles" / BUNDLE),
        "--ckpt-path",
        str(ckpt),
        "--input",
        str(folder),
        "--output",
        str(out),
        "--device",
        "cpu",
        "--workers",
        "0",
        "--no-progress",
    ]
    assert main(args) == 0
    rows = {r["path"]: r for r in _rows(out / "predictions.csv")}
    assert len(rows) == len(test_items) + 1 and all(r["status"] == "ok" for r in rows.values())
    for n, item in enumerate(test_items):
        for c in CLASSES:
            expected = float(evaluated[item["image"]][f"prob_{c}"])
            assert float(rows[f"volumes/case{n}.nii.gz"][f"prob_{c}"]) == pytest.approx(expected, abs=1e-5)
    [series] = [r for p, r in rows.items() if p.startswith("ct/[series ")]
    assert series["modality"] == "CT" and series["pred_name"] in CLASSES


@pytest.mark.slow
def test_metadata_and_network_io_verify(trained, tmp_path):
    verify_bundle(BUNDLE, trained / "models")
    # the packed copy describes a 3D input, and MONAI's check passes on it outside this repository
    packed = tmp_path / "elsewhere" / BUNDLE
    assert (
        main(
            [
                "export",
                "--bundle",
                str(REPO_ROOT / "bundles" / BUNDLE),
                "--ckpt-dir",
                str(trained / "models"),
                "--format",
                "bundle",
                "--out",
                str(packed),
            ]
        )
        == 0
    )
    meta = json.loads((packed / "configs" / "metadata.json").read_text())
    assert meta["network_data_format"]["inputs"]["image"]["spatial_shape"] == [16, 16, 16]
    verify = subprocess.run(
        [
            sys.executable,
            "-m",
            "monai.bundle",
            "verify_net_in_out",
            "network_def",
            "--meta_file",
            str(packed / "configs" / "metadata.json"),
            "--config_file",
            str(packed / "configs" / "inference.json"),
            "--bundle_root",
            str(packed),
            "--device",
            "cpu",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert verify.returncode == 0, verify.stdout[-3000:] + verify.stderr[-3000:]
