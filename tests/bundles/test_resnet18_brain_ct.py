"""End to end: the ResNet-18 brain CT bundle trains, resumes, evaluates, infers and exports.

Runs as users do (`python -m monai.bundle run ...` in a subprocess) on tiny synthetic data: 32 px
inputs, random initialisation, outputs under the test's tmp folder.
"""

import csv
import json

import pytest
import torch

from tests.bundles.bundle_helpers import REPO_ROOT, bundle_config, run_bundle, verify_bundle
from toolkit.data import load_datalist, make_synthetic_dataset

BUNDLE = "resnet18_brain_ct"
TINY = {"image_size": 32, "batch_size": 4, "pretrained": "None"}


@pytest.fixture(scope="module")
def trained(module_tmp):
    """One epoch of training on tiny synthetic data; shared by the tests below."""
    tmp = module_tmp("bundle")
    datalist = make_synthetic_dataset(
        tmp / "data", n_patients=12, images_per_patient=2, image_size=48, seed=1
    )
    run_bundle(BUNDLE, "training", "train", tmp, dataset_dir=datalist, max_epochs=1, **TINY)
    return tmp, datalist


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_training_writes_checkpoints_history_and_tensorboard(trained):
    tmp, _ = trained
    models = tmp / "models"
    assert (models / "model.pt").is_file()
    assert (models / "checkpoint_final.pt").is_file()
    info = json.loads((models / "model_info.json").read_text())
    assert info["class_names"] == ["glioma", "meningioma", "pituitary"]
    assert info["network"] == {"name": "resnet18", "num_classes": 3, "in_channels": 3}
    assert info["preprocessing"]["image_size"] == 32 and info["preprocessing"]["intensity"] == "imagenet"
    split = json.loads((tmp / "output" / "datalist.json").read_text())
    assert info["split_fingerprint"] == split["split_fingerprint"] and split["split_spec"]["seed"] == 0
    state = torch.load(models / "checkpoint_final.pt", weights_only=True)
    assert {"model", "optimizer", "lr_scheduler", "trainer"} <= set(state)

    history = _rows(tmp / "output" / "train" / "training_history.csv")
    assert [int(r["epoch"]) for r in history] == [1]
    assert 0.0 <= float(history[0]["val_accuracy"]) <= 1.0 and float(history[0]["train_loss"]) > 0

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = list((tmp / "output" / "train").glob("events.out.tfevents.*"))
    assert events, "no TensorBoard event file written"
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert "train_loss" in tags and "val_accuracy" in tags
    assert len(acc.Scalars("train_loss")) >= 1


@pytest.mark.slow
def test_resume_continues_at_the_next_epoch(trained, tmp_path):
    tmp, datalist = trained
    # resume in a copy so the other tests keep the one-epoch state
    import shutil

    shutil.copytree(tmp / "models", tmp_path / "models")
    shutil.copytree(tmp / "output", tmp_path / "output")
    result = run_bundle(
        BUNDLE, "training", "train", tmp_path, dataset_dir=datalist, max_epochs=2, resume=True, **TINY
    )
    history = _rows(tmp_path / "output" / "train" / "training_history.csv")
    assert [int(r["epoch"]) for r in history] == [1, 2]
    assert history[0] == _rows(tmp / "output" / "train" / "training_history.csv")[0]
    trainer = torch.load(tmp_path / "models" / "checkpoint_final.pt", weights_only=True)["trainer"]
    assert trainer["iteration"] == 2 * trainer["epoch_length"]
    assert "resuming from iteration" in result.stdout and "epoch 1 until 2 epochs" in result.stdout


@pytest.mark.slow
def test_evaluation_files_match_the_test_split(trained):
    tmp, datalist = trained
    # nothing repeated from training: size, network and split come from what training wrote
    run_bundle(BUNDLE, "evaluating", "evaluate", tmp)
    test_items = load_datalist(datalist)["test"]
    rows = _rows(tmp / "output" / "eval" / "predictions.csv")
    assert sorted(r["image"] for r in rows) == sorted(i["image"] for i in test_items)
    for row in rows:
        probs = [float(row[f"prob_{c}"]) for c in ("glioma", "meningioma", "pituitary")]
        assert sum(probs) == pytest.approx(1.0, abs=1e-4)
        assert int(row["pred"]) == max(range(3), key=probs.__getitem__)
    metrics = json.loads((tmp / "output" / "eval" / "metrics.json").read_text())
    right = sum(r["label"] == r["pred"] for r in rows)
    assert metrics["accuracy"] == pytest.approx(right / len(rows))
    assert metrics["num_samples"] == len(rows) and metrics["split"] == "test"


@pytest.mark.slow
def test_evaluation_runs_as_an_overlay_on_training_with_plain_run(trained, tmp_path):
    """The model zoo's form, `run --config_file "[train.json, evaluate.json]"`, evaluates (the same
    predictions as `run evaluating` above) and trains nothing."""
    tmp, _ = trained
    if not (tmp / "output" / "eval" / "predictions.csv").is_file():
        run_bundle(BUNDLE, "evaluating", "evaluate", tmp)
    weights = (tmp / "models" / "model.pt").stat().st_mtime_ns
    run_bundle(BUNDLE, "run", "train_evaluate", tmp, eval_dir=tmp_path / "overlay")
    alone = (tmp / "output" / "eval" / "predictions.csv").read_text()
    assert alone == (tmp_path / "overlay" / "predictions.csv").read_text() and alone.count("\n") > 1
    assert (tmp / "models" / "model.pt").stat().st_mtime_ns == weights


@pytest.mark.slow
def test_exported_metadata_describes_the_trained_model_and_its_evaluation(trained, tmp_path):
    """Trained from random weights at 32 px: the copy's metadata says so, and carries the test figures
    of the evaluation above (run first if this test runs alone)."""
    from toolkit.bundle.export import pack_bundle

    tmp, _ = trained
    if not (tmp / "output" / "eval" / "metrics.json").is_file():
        run_bundle(BUNDLE, "evaluating", "evaluate", tmp)
    packed = pack_bundle(REPO_ROOT / "bundles" / BUNDLE, tmp_path / BUNDLE, ckpt_dir=tmp / "models")
    meta = json.loads((packed / "configs" / "metadata.json").read_text())
    assert "random initialisation" in meta["description"] and "ImageNet" not in meta["description"]
    assert "32x32" in meta["description"] and meta["image_classes"].startswith("3-channel 32x32 image")
    assert meta["label_classes"] == "one class index per image: 0 = glioma, 1 = meningioma, 2 = pituitary"
    assert meta["pred_classes"].startswith("3 class probabilities")
    metrics = json.loads((tmp / "output" / "eval" / "metrics.json").read_text())
    assert meta["eval_metrics"]["split"] == "test"
    assert meta["eval_metrics"]["accuracy"] == metrics["accuracy"]
    assert meta["eval_metrics"]["num_samples"] == metrics["num_samples"]


@pytest.mark.slow
def test_inference_rows_match_the_input_files(trained, tmp_path):
    tmp, datalist = trained
    inputs = sorted(i["image"] for i in load_datalist(datalist)["test"])
    folder = tmp_path / "study"
    for n, path in enumerate(inputs):
        target = folder / f"sub{n % 2}" / (f"img{n}" + ("" if path.endswith(".dcm") else ".png"))
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(open(path, "rb").read())  # DICOMs lose their extension on purpose
    run_bundle(BUNDLE, "inference", "inference", tmp, dataset_dir=folder, inference_dir=tmp_path / "out")
    rows = _rows(tmp_path / "out" / "predictions.csv")
    assert sorted(r["image"] for r in rows) == sorted(str(p) for p in folder.rglob("img*"))
    assert all(r["pred_name"] in ("glioma", "meningioma", "pituitary") for r in rows)


@pytest.mark.slow
def test_inference_applies_the_temperature_saved_beside_the_weights(trained, tmp_path):
    import shutil

    tmp, datalist = trained
    folder = tmp_path / "in"
    folder.mkdir()
    for n, item in enumerate(load_datalist(datalist)["test"][:3]):
        shutil.copy(item["image"], folder / f"{n}_{item['image'].rsplit('/', 1)[-1]}")
    models = tmp_path / "models"
    shutil.copytree(tmp / "models", models)
    run_bundle(BUNDLE, "inference", "inference", tmp, dataset_dir=folder, inference_dir=tmp_path / "t1")
    (models / "temperature.json").write_text(json.dumps({"temperature": 2.0}))
    run_bundle(
        BUNDLE,
        "inference",
        "inference",
        tmp,
        dataset_dir=folder,
        inference_dir=tmp_path / "t2",
        ckpt_dir=models,
    )
    names = ("glioma", "meningioma", "pituitary")
    plain, scaled = (_rows(tmp_path / d / "predictions.csv") for d in ("t1", "t2"))
    for a, b in zip(plain, scaled, strict=True):
        # softmax(logits / T) == softmax(log p / T): the softmax constant cancels
        expected = torch.softmax(torch.log(torch.tensor([float(a[f"prob_{c}"]) for c in names])) / 2.0, 0)
        assert [float(b[f"prob_{c}"]) for c in names] == pytest.approx(expected.tolist(), abs=1e-4)
        assert max(float(b[f"prob_{c}"]) for c in names) < max(float(a[f"prob_{c}"]) for c in names)


@pytest.mark.slow
def test_metadata_and_network_io_verify_offline(trained):
    verify_bundle(BUNDLE, trained[0] / "models")


@pytest.mark.slow
def test_evaluating_another_split_is_refused_with_both_fingerprints(trained, tmp_path):
    tmp, datalist = trained
    result = run_bundle(
        BUNDLE, "evaluating", "evaluate", tmp, check=False, seed=1, eval_dir=tmp_path / "eval"
    )
    assert result.returncode != 0
    message = result.stdout + result.stderr
    assert "SplitMismatchError" in message and "seed 0 -> 1" in message
    fingerprint = json.loads((tmp / "output" / "datalist.json").read_text())["split_fingerprint"]
    assert f"fingerprint {fingerprint}" in message
    assert not (tmp_path / "eval" / "predictions.csv").exists()


@pytest.mark.slow
def test_an_override_contradicting_the_trained_model_is_refused(trained, tmp_path):
    tmp, _ = trained
    result = run_bundle(
        BUNDLE, "evaluating", "evaluate", tmp, check=False, image_size=64, eval_dir=tmp_path / "eval"
    )
    assert result.returncode != 0
    assert "image_size=64 (trained with 32)" in result.stdout + result.stderr
    # agreeing overrides are fine
    run_bundle(
        BUNDLE,
        "evaluating",
        "evaluate",
        tmp,
        image_size=32,
        model_name="resnet18",
        eval_dir=tmp_path / "eval",
    )
    assert (tmp_path / "eval" / "predictions.csv").is_file()


@pytest.mark.slow
def test_trained_checkpoint_exports_with_equal_outputs(trained):
    tmp, _ = trained
    from monai.bundle import ConfigParser

    from toolkit.bundle.configs import read_config

    parser = ConfigParser(read_config(bundle_config(BUNDLE, "inference")))
    parser["ckpt_dir"] = str(tmp / "models")
    network = parser.get_parsed_content("network_def").eval()
    network.load_state_dict(torch.load(tmp / "models" / "model.pt", weights_only=True))
    x = torch.randn(2, 3, 32, 32)
    exported = torch.export.export(network, (x,))
    with torch.no_grad():
        assert torch.allclose(exported.module()(x), network(x), atol=1e-5)
