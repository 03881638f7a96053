"""multi_gpu_train.json: two processes (gloo on CPU, NCCL on GPUs) train one model with DDP."""

import csv
import os
import subprocess
import sys

import pytest
import torch

from tests.bundles.bundle_helpers import REPO_ROOT, bundle_config
from toolkit.data import make_synthetic_dataset


@pytest.mark.slow
def test_two_process_ddp_training_writes_one_model(tmp_path):
    datalist = make_synthetic_dataset(tmp_path / "data", n_patients=10, images_per_patient=2, image_size=48, seed=2)
    configs = f"['{bundle_config('resnet18_brain_ct', 'train')}','{bundle_config('resnet18_brain_ct', 'multi_gpu_train')}']"
    args = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "monai.bundle", "run", "training", "--config_file", configs,
        "--dataset_dir", str(datalist), "--ckpt_dir", str(tmp_path / "models"), "--output_dir", str(tmp_path / "output"),
        "--max_epochs", "1", "--image_size", "32", "--batch_size", "4", "--pretrained", "None",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CIT_WEIGHTS_DIR": str(tmp_path / "weights")}
    result = subprocess.run(args, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]

    state = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in state), "DDP wrapper leaked into the saved weights"
    with open(tmp_path / "output" / "train" / "training_history.csv") as f:
        assert [row["epoch"] for row in csv.DictReader(f)] == ["1"]
    # each rank trained on its own half of the training set
    n_train = len(__import__("json").loads(datalist.read_text())["training"])
    assert f"Iter: {-(-n_train // 2 // 4)}/{-(-n_train // 2 // 4)}" in result.stdout + result.stderr
