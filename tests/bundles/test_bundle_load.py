"""`monai.bundle.load` as a MONAI user calls it, on every supervised bundle: from another working
directory, with both workflow types (``"train"`` is load's default), on a copy whose model was trained
on other classes than the study's (as a user's model on their own data is). MONAI fills the network the
workflow's ``network_def`` builds with ``copy_model_state``, which skips tensors of another shape
without a word, so every tensor of the trained model must come back.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from monai.bundle import load

from tests.bundles.bundle_helpers import REPO_ROOT
from toolkit.bundle import load_model_info

SUPERVISED = sorted(
    p.parent.parent.name
    for p in (REPO_ROOT / "bundles").glob("*/configs/inference.json")
    if "study_model" in json.loads(p.read_text())
)


def _trained_copy(bundle: str, root) -> tuple:
    """The bundle copied under ``root/bundles``, with a random model of one class more than its study
    (a ResNet-18 of the study's input channels and dimensions stands in for big study networks)."""
    copy = shutil.copytree(
        REPO_ROOT / "bundles" / bundle,
        root / "bundles" / bundle,
        ignore=shutil.ignore_patterns("models", "output"),
    )
    study = json.loads((copy / "configs" / "inference.json").read_text())["study_model"]
    classes = [*study["class_names"], "other"]
    network = {
        "name": "resnet18",
        "num_classes": len(classes),
        "in_channels": study["network"]["in_channels"],
    }
    if "spatial_dims" in study["network"]:
        network["spatial_dims"] = study["network"]["spatial_dims"]
    models = copy / "models"
    models.mkdir()
    record = {**study, "network": network, "class_names": classes}
    (models / "model_info.json").write_text(json.dumps(record))
    state = load_model_info(models).create_network().state_dict()
    torch.save(state, models / "model.pt")
    return copy, state


def test_every_predicting_bundle_is_covered():
    """Each bundle whose metadata states a prediction output states its study's model too."""
    predicting = sorted(
        p.parent.parent.name
        for p in (REPO_ROOT / "bundles").glob("*/configs/metadata.json")
        if "pred" in json.loads(p.read_text())["network_data_format"]["outputs"]
    )
    assert predicting and SUPERVISED == predicting


@pytest.mark.parametrize("bundle", SUPERVISED)
def test_monai_bundle_load_returns_a_model_of_other_classes_whole(bundle, tmp_path, monkeypatch):
    copy, state = _trained_copy(bundle, tmp_path)
    args = tmp_path / "args.json"
    args.write_text(json.dumps({"bundle_root": str(copy)}))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    for workflow_type in ("train", "inference"):
        net = load(bundle, bundle_dir=str(copy.parent), workflow_type=workflow_type, args_file=str(args))
        loaded = net.state_dict()
        assert loaded.keys() == state.keys(), workflow_type
        assert all(torch.equal(loaded[k], v) for k, v in state.items()), workflow_type
