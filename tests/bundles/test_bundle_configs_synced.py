"""Bundles as MONAI's own tools use them: each config file is whole (what the bundles share is copied in
from configs/base by scripts/sync_bundle_configs.py), so a bundle runs from any working directory and
MONAI's experiment tracking finds its trainer."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from monai.bundle import ConfigWorkflow

from tests.bundles.bundle_helpers import REPO_ROOT, run_bundle
from toolkit.data import make_synthetic_dataset

sys.path.insert(0, str(REPO_ROOT / "scripts"))
import sync_bundle_configs  # noqa: E402

BUNDLES = sorted(
    p.name for p in (REPO_ROOT / "bundles").iterdir() if (p / "configs" / "train.json").is_file()
)


def test_every_bundle_config_is_in_step_with_configs_base():
    check = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "sync_bundle_configs.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stderr
    for path in sync_bundle_configs.bundle_configs():
        assert '"%' not in path.read_text(), f"{path}: a macro resolves against the working directory"


def test_a_stale_copy_is_rewritten_from_its_source_and_a_macro_is_written_in():
    config = json.loads((REPO_ROOT / "bundles" / "resnet50_pneumonia" / "configs" / "train.json").read_text())
    config["train"]["amp"] = "edited in the bundle"
    config["optimizer"] = "%configs/base/components.json#optimizer#adam"
    synced = sync_bundle_configs.synced(config)
    base = json.loads((REPO_ROOT / "configs" / "base" / "train.json").read_text())
    assert synced["train"] == base["train"]
    assert synced["optimizer"]["_target_"] == "torch.optim.Adam"
    assert synced["_base_"]["optimizer"] == "configs/base/components.json#optimizer#adam"
    assert synced["augmentation"] == config["augmentation"]  # the bundle's own recipe is left as it is


@pytest.mark.parametrize("bundle", BUNDLES)
def test_monai_loads_every_bundle_from_another_working_directory(bundle, tmp_path, monkeypatch):
    """From elsewhere, MONAI's ConfigWorkflow finds the bundle's folder and builds its parts (the
    properties themselves are checked from the repository root by test_bundle_properties.py)."""
    monkeypatch.chdir(tmp_path)
    configs = REPO_ROOT / "bundles" / bundle / "configs"
    train = ConfigWorkflow(config_file=str(configs / "train.json"), workflow_type="train")
    train.initialize()
    assert train.bundle_root == str(REPO_ROOT / "bundles" / bundle)
    assert train.parser.get_parsed_content("ckpt_dir") == str(REPO_ROOT / "bundles" / bundle / "models")
    if (configs / "inference.json").is_file():  # the shipped, untrained bundle: its study's model
        infer = ConfigWorkflow(config_file=str(configs / "inference.json"), workflow_type="infer")
        infer.initialize()
        assert isinstance(infer.network_def, torch.nn.Module)
        assert callable(infer.preprocessing)


def test_mlflow_tracking_records_a_training_run(tmp_path):
    mlflow = pytest.importorskip("mlflow")  # the `tracking` extra; installed by the README's test command
    datalist = make_synthetic_dataset(
        tmp_path / "data", n_patients=12, images_per_patient=2, image_size=48, seed=1
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # output_dir as an expression: MONAI's tracking patch appends "+ '/config_<time>.json'" to it
    run_bundle(
        "resnet18_brain_ct",
        "training",
        "train",
        tmp_path,
        cwd=elsewhere,
        tracking="mlflow",
        output_dir=f"$'{tmp_path / 'output'}'",
        dataset_dir=datalist,
        max_epochs=1,
        image_size=32,
        batch_size=4,
        pretrained="None",
        learning_rate=0.002,
    )
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'output' / 'mlruns.db'}")
    experiment = client.get_experiment_by_name("monai_experiment")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.data.params["max_epochs"] == "1"
    assert "train_loss" in run.data.metrics and "val_accuracy" in run.data.metrics
    assert client.get_metric_history(run.info.run_id, "lr_group_0")[0].value == pytest.approx(0.002)
    configs = [a.path for a in client.list_artifacts(run.info.run_id)]
    assert any(p.startswith("config_") and p.endswith(".json") for p in configs), configs
