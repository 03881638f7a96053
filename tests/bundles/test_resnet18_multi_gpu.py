"""multi_gpu_train.json / multi_gpu_evaluate.json: two processes (gloo on CPU, NCCL on GPUs) train one
model with DDP, and a two-process evaluation writes exactly what one process writes."""

import csv
import json
import os
import subprocess
import sys

import pytest
import torch

from tests.bundles.bundle_helpers import REPO_ROOT, config_arg, run_bundle
from toolkit.data import make_synthetic_dataset

BUNDLE = "resnet18_brain_ct"


def _torchrun(run_id: str, config: str, tmp_path, **overrides) -> subprocess.CompletedProcess:
    args = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "monai.bundle",
        "run",
        run_id,
        "--config_file",
        config_arg(BUNDLE, config),
        "--ckpt_dir",
        str(tmp_path / "models"),
        "--output_dir",
        str(tmp_path / "output"),
    ]
    for key, value in overrides.items():
        args += [f"--{key}", str(value)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CIT_WEIGHTS_DIR": str(tmp_path / "weights")}
    result = subprocess.run(args, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return result


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_two_process_training_then_evaluation_equal_to_one_process(tmp_path):
    # 3 images per patient: the held-out patient's 3 images are an odd-sized test set for 2 ranks
    datalist = make_synthetic_dataset(
        tmp_path / "data", n_patients=10, images_per_patient=3, image_size=48, seed=2
    )
    result = _torchrun(
        "training",
        "multi_gpu_train",
        tmp_path,
        dataset_dir=datalist,
        max_epochs=1,
        image_size=32,
        batch_size=4,
        pretrained=None,
    )

    state = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in state), "DDP wrapper leaked into the saved weights"
    assert [row["epoch"] for row in _rows(tmp_path / "output" / "train" / "training_history.csv")] == ["1"]
    assert json.loads((tmp_path / "models" / "model_info.json").read_text())["network"]["name"] == "resnet18"
    # each rank trained on its own half of the training set
    n_train = len(json.loads(datalist.read_text())["training"])
    assert f"Iter: {-(-n_train // 2 // 4)}/{-(-n_train // 2 // 4)}" in result.stdout + result.stderr

    n_test = len(json.loads((tmp_path / "output" / "datalist.json").read_text())["test"])
    assert n_test % 2 == 1
    _torchrun("evaluating", "multi_gpu_evaluate", tmp_path, eval_dir=tmp_path / "eval_ddp", batch_size=2)
    run_bundle(BUNDLE, "evaluating", "evaluate", tmp_path, eval_dir=tmp_path / "eval_one")
    ddp, one = (
        _rows(tmp_path / "eval_ddp" / "predictions.csv"),
        _rows(tmp_path / "eval_one" / "predictions.csv"),
    )
    assert len(ddp) == n_test, "padded duplicates or lost items in the gathered predictions"
    assert [r["image"] for r in ddp] == [r["image"] for r in one]
    for a, b in zip(ddp, one, strict=True):
        assert a["pred"] == b["pred"]
        assert [float(a[k]) for k in a if k.startswith("prob_")] == pytest.approx(
            [float(b[k]) for k in b if k.startswith("prob_")], abs=1e-5
        )
    metrics = [json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("eval_ddp", "eval_one")]
    assert metrics[0]["accuracy"] == metrics[1]["accuracy"] and metrics[0]["num_samples"] == n_test
