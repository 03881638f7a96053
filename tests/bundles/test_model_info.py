"""A trained bundle describes itself: `cit infer` and the bundle's own inference run a model trained
with another architecture and input size than the bundle's defaults, with no override repeated."""

import shutil
import subprocess
import sys

import numpy as np
import pytest

from tests.bundles.bundle_helpers import REPO_ROOT, run_bundle
from toolkit.data import load_datalist, make_synthetic_dataset

BUNDLE = "resnet18_brain_ct"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("described")
    datalist = make_synthetic_dataset(tmp / "data", n_patients=9, images_per_patient=2, image_size=48, seed=4)
    run_bundle(BUNDLE, "training", "train", tmp, dataset_dir=datalist, max_epochs=1, image_size=40,
               model_name="resnet34d", batch_size=4, pretrained=None)  # fmt: skip
    inputs = tmp / "inputs"
    for n, item in enumerate(load_datalist(datalist)["test"]):
        inputs.mkdir(exist_ok=True)
        shutil.copy(item["image"], inputs / f"img{n}{'.dcm' if item['image'].endswith('.dcm') else '.png'}")
    return tmp, inputs


def _cit(*args):
    return subprocess.run([sys.executable, "-m", "toolkit", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=600)  # fmt: skip


def _probs(path, key):
    import csv

    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return {r[key].rsplit("/", 1)[-1]: [float(r[k]) for k in r if k.startswith("prob_")] for r in rows}


@pytest.mark.slow
def test_cit_infer_needs_no_override_and_equals_the_bundle(trained, tmp_path):
    tmp, inputs = trained
    ckpt = tmp / "models" / "model.pt"
    result = _cit("infer", "--bundle", f"bundles/{BUNDLE}", "--ckpt-path", str(ckpt), "--input", str(inputs),
                  "--output", str(tmp_path / "cit"), "--device", "cpu", "--no-progress")  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run_bundle(BUNDLE, "inference", "inference", tmp, dataset_dir=inputs, inference_dir=tmp_path / "bundle")
    ours, theirs = _probs(tmp_path / "cit" / "predictions.csv", "path"), _probs(tmp_path / "bundle" / "predictions.csv", "image")
    assert set(ours) == set(theirs) and len(ours) >= 2
    for name in ours:
        np.testing.assert_allclose(ours[name], theirs[name], atol=2e-6, err_msg=name)


@pytest.mark.slow
def test_contradicting_override_or_missing_description_is_a_clear_error(trained, tmp_path):
    tmp, inputs = trained
    ckpt = tmp / "models" / "model.pt"
    base = ["infer", "--bundle", f"bundles/{BUNDLE}", "--input", str(inputs), "--device", "cpu", "--no-progress"]
    result = _cit(*base, "--ckpt-path", str(ckpt), "--output", str(tmp_path / "a"), "--set", "image_size=64")
    assert result.returncode != 0 and "image_size=64 (trained with 40)" in result.stderr + result.stdout
    bare = tmp_path / "weights_only"
    bare.mkdir()
    shutil.copy(ckpt, bare / "model.pt")
    result = _cit(*base, "--ckpt-path", str(bare / "model.pt"), "--output", str(tmp_path / "b"))
    assert result.returncode != 0 and "model_info.json is missing" in result.stderr + result.stdout
