"""End to end: pretrain_ssl writes a backbone + its record; a classification bundle starts from it; the
leakage guard refuses training and evaluation on images the backbone saw.

Runs as users do (`python -m monai.bundle run ...`) on tiny synthetic data (32 px, 1 epoch).
"""

import json

import pytest
import torch
from monai.bundle import ConfigParser

from tests.bundles.bundle_helpers import REPO_ROOT, bundle_config, run_bundle
from toolkit.bundle.backbone import (
    ADOPTED_NAME,
    BackboneLeakageError,
    adopt_backbone,
    check_evaluation,
    export_classifier_backbone,
    pool_images,
    read_backbone_record,
)
from toolkit.data import load_datalist, make_synthetic_dataset
from toolkit.io import sha256_file
from toolkit.networks import create_network
from toolkit.networks.weights import read_state_dict

TINY = {"image_size": 32, "max_epochs": 1}


def _hashes(doc, *splits):
    return {sha256_file(item["image"]) for split in splits for item in doc[split]}


@pytest.fixture(scope="module")
def data(module_tmp):
    tmp = module_tmp("pretrain")
    datalist = make_synthetic_dataset(
        tmp / "data", n_patients=12, images_per_patient=2, image_size=48, seed=0
    )
    return tmp, datalist, load_datalist(datalist)


@pytest.fixture(scope="module")
def backbone(data):
    """One epoch of SimCLR on the training + validation images of the datalist (the default splits)."""
    tmp, datalist, _ = data
    out = tmp / "ssl"
    result = run_bundle(
        "pretrain_ssl",
        "training",
        "train",
        out,
        dataset_dir=f"['{datalist}']",
        batch_size=8,
        **{"view_augmentation#7#prob": 0.3},  # as a user overrides one step of the views
        **TINY,
    )
    (out / "run.log").write_text(result.stdout + result.stderr)
    return out / "models" / "backbone.pt"


def test_the_views_are_the_bundles_json_list_as_overridden(backbone):
    """The log names each built view transform with its parameters, the override included."""
    log = (backbone.parents[1] / "run.log").read_text()
    lines = [line for line in log.splitlines() if " - INFO - view_augmentation#" in line]
    assert len(lines) == 9, log[-3000:]
    assert "view_augmentation#0: RandScaleCropd(" in lines[0]
    assert "view_augmentation#7: RandGaussianNoised(" in lines[7] and "prob=0.3" in lines[7]


@pytest.fixture(scope="module")
def finetuned(data, backbone):
    """resnet18_brain_ct trained for one epoch from the backbone."""
    tmp, datalist, _ = data
    out = tmp / "finetune"
    run_bundle(
        "resnet18_brain_ct",
        "training",
        "train",
        out,
        dataset_dir=datalist,
        pretrained=backbone,
        batch_size=4,
        **TINY,
    )
    return out


def test_pretraining_writes_the_backbone_and_what_it_saw(data, backbone):
    _, datalist, doc = data
    record = json.loads(backbone.with_suffix(".json").read_text())
    assert set(record["image_sha256"]) == _hashes(doc, "training", "validation")
    assert not set(record["image_sha256"]) & _hashes(doc, "test")
    assert record["weights_sha256"] == sha256_file(backbone)
    assert (record["architecture"], record["method"], record["epochs"], record["image_size"]) == (
        "resnet18",
        "simclr",
        1,
        32,
    )
    assert record["sources"] == [str(datalist.resolve())]
    state = read_state_dict(backbone)
    assert set(state) == set(create_network("resnet18", num_classes=3).state_dict()) - {
        "fc.weight",
        "fc.bias",
    }
    history = (backbone.parents[1] / "output" / "pretrain" / "training_history.csv").read_text().splitlines()
    assert (
        history[0].startswith("epoch,train_loss") and "embedding_spread" in history[0] and len(history) == 2
    )
    assert read_backbone_record(backbone)["method"] == "simclr"


def test_a_classification_bundle_starts_from_the_trunk_with_a_fresh_head(data, backbone, monkeypatch):
    """The network exactly as resnet18_brain_ct's train.json builds it, before any step."""
    tmp, datalist, _ = data
    monkeypatch.chdir(REPO_ROOT)  # the base macros are relative to the repository root
    parser = ConfigParser()
    parser.read_config(bundle_config("resnet18_brain_ct", "train"))
    parser.update(
        {"pretrained": str(backbone), "dataset_dir": str(datalist), "output_dir": str(tmp / "parsed")}
    )
    network = parser.get_parsed_content("train#network_def")
    trunk = read_state_dict(backbone)
    own = network.state_dict()
    assert all(torch.equal(own[k], v) for k, v in trunk.items())
    assert network.pretrained_report.missing == ["fc.weight", "fc.bias"]
    assert own["fc.weight"].shape == (3, 512)


def test_finetuning_records_the_backbone_and_evaluation_refuses_seen_images(data, backbone, finetuned):
    adopted = json.loads((finetuned / "models" / ADOPTED_NAME).read_text())
    assert adopted["weights_file"] == str(backbone.resolve())
    # the test split was never seen: evaluating it is allowed; the validation split was: refused
    check_evaluation(
        finetuned / "models" / "model.pt", load_datalist(finetuned / "output" / "datalist.json"), "test"
    )
    result = run_bundle(
        "resnet18_brain_ct", "evaluating", "evaluate", finetuned, check=False, eval_split="validation"
    )
    assert result.returncode != 0
    seen = len(load_datalist(finetuned / "output" / "datalist.json")["validation"])
    assert (
        f"BackboneLeakageError: refusing to evaluate: {seen} image(s) of the validation split"
        in result.stderr
    )


def test_training_refuses_a_backbone_that_saw_the_test_split(data, backbone, tmp_path):
    _, _, doc = data
    leaky = {**doc, "test": doc["test"] + doc["training"][:2]}
    with pytest.raises(BackboneLeakageError, match="refusing to train: 2 image"):
        adopt_backbone(str(backbone), tmp_path, leaky)
    assert not (tmp_path / ADOPTED_NAME).exists()
    assert adopt_backbone(str(backbone), tmp_path, doc)["method"] == "simclr"
    assert (tmp_path / ADOPTED_NAME).is_file()
    # a run without a recorded backbone removes the record an earlier run left
    assert adopt_backbone("imagenet", tmp_path, leaky) is None
    assert not (tmp_path / ADOPTED_NAME).exists()


def test_a_record_of_other_weights_is_refused(backbone, tmp_path):
    copy = tmp_path / "backbone.pt"
    copy.write_bytes(backbone.read_bytes() + b"\0")
    copy.with_suffix(".json").write_text(backbone.with_suffix(".json").read_text())
    with pytest.raises(ValueError, match="belongs to other weights"):
        read_backbone_record(copy)


def test_a_backbone_of_another_architecture_is_refused(backbone):
    with pytest.raises(ValueError, match="is a resnet18 backbone .* this network is resnet34"):
        create_network("resnet34", num_classes=2, pretrained=str(backbone))


def test_pooling_excludes_a_targets_test_images_and_duplicates(data, tmp_path):
    _, datalist, doc = data
    folder = tmp_path / "folder"
    folder.mkdir()
    for i, item in enumerate(doc["training"][:3] + doc["test"][:1]):
        (folder / f"{i}{item['image'][-4:]}").write_bytes(open(item["image"], "rb").read())
    pool = pool_images([str(folder), str(datalist)], tmp_path, splits=("training",), exclude=str(datalist))
    assert pool["excluded"] == 1 and pool["duplicates"] == 3
    assert set(pool["image_sha256"]) == _hashes(doc, "training")
    with pytest.raises(FileNotFoundError, match="pretraining source not found"):
        pool_images([str(tmp_path / "missing")], tmp_path)


def test_supervised_mode_exports_the_classifier_trunk(data, finetuned):
    """configs/supervised.json's last step on a trained classifier: the trunk + its training/validation images."""
    _, _, doc = data
    path = export_classifier_backbone(
        finetuned / "models",
        finetuned / "output" / "datalist.json",
        out=finetuned / "sup" / "backbone.pt",
        epochs=1,
    )
    record = read_backbone_record(path)
    assert record["method"] == "supervised" and record["supervised_classes"] == doc["labels"]
    assert set(record["image_sha256"]) == _hashes(doc, "training", "validation")
    classifier = read_state_dict(finetuned / "models" / "model.pt")
    assert all(torch.equal(classifier[k], v) for k, v in read_state_dict(path).items())
    assert "fc.weight" not in read_state_dict(path)


def test_supervised_config_runs_and_writes_a_backbone(data, tmp_path):
    _, datalist, doc = data
    run_bundle("pretrain_ssl", "training", "supervised", tmp_path, dataset_dir=datalist, batch_size=4, **TINY)
    record = read_backbone_record(tmp_path / "models" / "backbone.pt")
    assert record["method"] == "supervised" and record["epochs"] == 1
    assert set(record["image_sha256"]) == _hashes(doc, "training", "validation")


def test_distill_method_writes_a_resnet_trunk_taught_by_the_imagenet_lite0(data, tmp_path):
    """method=distill as a user runs it: the record names the teacher and its temperature, and the
    backbone is the ResNet-18 trunk alone (no teacher weight, no 1,000-class head)."""
    _, datalist, doc = data
    run_bundle(
        "pretrain_ssl",
        "training",
        "train",
        tmp_path,
        dataset_dir=f"['{datalist}']",
        method="distill",
        batch_size=8,
        **TINY,
    )
    backbone = tmp_path / "models" / "backbone.pt"
    record = read_backbone_record(backbone)
    assert (record["method"], record["teacher"], record["temperature"]) == (
        "distill",
        "tf_efficientnet_lite0",
        1.0,
    )
    assert set(record["image_sha256"]) == _hashes(doc, "training", "validation")
    assert set(read_state_dict(backbone)) == set(create_network("resnet18", num_classes=3).state_dict()) - {
        "fc.weight",
        "fc.bias",
    }


def test_metadata_is_valid():
    from monai.bundle import verify_metadata

    schema = REPO_ROOT / "toolkit" / "resources" / "bundle_metadata_schema.json"
    verify_metadata(meta_file=bundle_config("pretrain_ssl", "metadata"), filepath=str(schema))


def test_default_data_is_the_synthetic_training_and_validation_patients(tmp_path):
    synthetic = {"n_patients": 10, "images_per_patient": 1, "image_size": 32}
    pool = pool_images([], tmp_path, synthetic=synthetic)
    doc = load_datalist(tmp_path / "synthetic_data" / "datalist.json")
    assert set(pool["image_sha256"]) == _hashes(doc, "training", "validation")
    assert doc["test"] and not set(pool["image_sha256"]) & _hashes(doc, "test")
