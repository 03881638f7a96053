"""End to end: the ResNet-D COVID-19 radiography bundle runs its recipe on a tiny tree in the database's layout.

The test writes ``{COVID,Lung_Opacity,Normal,Viral Pneumonia}/images/*.png`` (imbalanced, no
published split) with 40 px grey PNGs and runs the bundle as users do, with 32 px inputs, random
initialisation and ResNet-18-D (the smallest depth of the family).
"""

import csv
import math
import re

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from PIL import Image

from tests.bundles.bundle_helpers import bundle_config, bundle_recipe, run_bundle, verify_bundle
from toolkit.bundle.configs import read_config
from toolkit.data import load_datalist
from toolkit.transforms.minority import MinoritySynthesisd

BUNDLE = "resnet_d_covid_cxr"
COUNTS = {"COVID": 14, "Lung_Opacity": 10, "Normal": 24, "Viral Pneumonia": 6}
TINY = {"image_size": 32, "batch_size": 5, "pretrained": "None", "model_name": "resnet18d"}
EPOCHS = 4
BASE_LR = 0.001


def write_covid_tree(root, seed=0):
    rng = np.random.default_rng(seed)
    for cls, n in COUNTS.items():
        for k in range(n):
            path = root / cls / "images" / f"{cls}-{k + 1}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (40, 40), dtype=np.uint8)).save(path)
    return root


@pytest.fixture(scope="module")
def data(module_tmp):
    return write_covid_tree(module_tmp("covid") / "COVID-19_Radiography_Dataset")


def _parsed(tmp, data, **overrides):
    parser = ConfigParser(read_config(bundle_config(BUNDLE, "train")))
    parser.update(
        {
            "dataset_dir": str(data),
            "output_dir": str(tmp / "output"),
            "ckpt_dir": str(tmp / "models"),
            **overrides,
        }
    )
    parser.parse()
    return parser


def _half_up(x):
    return math.floor(x + 0.5)


@pytest.mark.parametrize("percent", [0, 10, 30])
def test_minority_classes_grow_by_percent_in_training_only(data, tmp_path, percent):
    parser = _parsed(tmp_path, data, minority_percent=percent, train_fraction=0.7, val_fraction=0.2)
    doc = parser.get_parsed_content("train#datalist")
    items = parser.get_parsed_content("train#items")
    real = [i for i in items if not i["synthesis"]]
    synthetic = [i for i in items if i["synthesis"]]
    assert [(i["image"], i["label"]) for i in real] == [(i["image"], i["label"]) for i in doc["training"]]
    counts = [sum(i["label"] == c for i in doc["training"]) for c in range(4)]
    largest = max(counts)
    for c, n in enumerate(counts):
        added = sum(i["label"] == c for i in synthetic)
        assert added == (_half_up(n * percent / 100) if n < largest else 0), (c, n, added)
    assert {i["synthesis"] for i in synthetic} <= {"rotate_crop", "invert", "blur", "noise"}
    # synthetic samples derive from training images only; validation / test stay as split
    held_out = {i["image"] for i in doc["validation"] + doc["test"]}
    assert {i["image"] for i in synthetic} <= {i["image"] for i in doc["training"]}
    assert not {i["image"] for i in synthetic} & held_out
    assert len(parser.get_parsed_content("validate#items")) == len(doc["validation"])
    assert not any("synthesis" in i for i in parser.get_parsed_content("validate#items"))
    # the split follows train_fraction (70/30), with validation carved from train (20 %), stratified
    total = sum(COUNTS.values())
    assert len(doc["test"]) == pytest.approx(0.3 * total, abs=4)
    assert len(doc["validation"]) == pytest.approx(0.7 * 0.2 * total, abs=4)
    assert all(sum(i["label"] == c for i in doc["test"]) >= 1 for c in range(4))


def _synthesis(image_size=32):
    """MinoritySynthesisd with the study's syntheses as the bundle's config states them (fresh objects)."""
    syntheses = bundle_recipe(BUNDLE, image_size=image_size).get_parsed_content("minority_synthesis")
    return MinoritySynthesisd("image", syntheses)


def test_synthesis_alters_only_synthetic_items_and_is_seeded():
    image = torch.rand(3, 32, 32)
    transform = _synthesis()
    transform.set_random_state(seed=0)
    assert torch.equal(transform({"image": image, "synthesis": ""})["image"], image)
    assert torch.allclose(
        transform({"image": image, "synthesis": "invert"})["image"], image.max() + image.min() - image
    )
    noisy = [
        _synthesis().set_random_state(seed=3)({"image": image, "synthesis": "noise"})["image"]
        for _ in range(2)
    ]
    assert torch.equal(noisy[0], noisy[1]) and not torch.equal(noisy[0], image)
    for kind in ("rotate_crop", "blur"):
        out = transform({"image": image, "synthesis": kind})["image"]
        assert out.shape == image.shape and not torch.allclose(out, image)
    smooth = torch.linspace(0, 1, 32).expand(3, 32, 32).contiguous()
    blurred = transform({"image": smooth, "synthesis": "blur"})["image"]
    assert float((blurred - smooth).abs().mean()) < 0.05  # a 3x3 blur: a small, local change
    with pytest.raises(ValueError, match="unknown synthesis"):
        transform({"image": image, "synthesis": "mixup"})


def _history(tmp):
    with open(tmp / "output" / "train" / "training_history.csv", newline="") as f:
        return list(csv.DictReader(f))


def _expected_lrs(warmup, cosine, epochs=EPOCHS):
    """The study's schedule, written out: linear warm-up over 10 % of the epochs (at least one),
    reaching the full rate when the cosine decay starts."""
    w = max(1, math.floor(0.1 * epochs + 0.5)) if warmup else 0
    lrs = []
    for e in range(epochs):
        if e < w:
            lrs.append(BASE_LR * (e + 1) / (w + 1))
        elif cosine:
            lrs.append(BASE_LR * 0.5 * (1 + math.cos(math.pi * (e - w) / (epochs - w))))
        else:
            lrs.append(BASE_LR)
    return lrs


@pytest.fixture(scope="module")
def trained(data, module_tmp):
    """Warm-up + cosine, 20 % minority augmentation, four tiny epochs, BatchNorm recalibrated on 6 images."""
    tmp = module_tmp("covid_run")
    result = run_bundle(
        BUNDLE, "training", "train", tmp, dataset_dir=data, max_epochs=EPOCHS, **TINY, recalibrate_bn_images=6
    )
    return tmp, result


@pytest.mark.slow
def test_training_runs_on_the_augmented_set_with_warmup_then_cosine(trained, data):
    tmp, result = trained
    history = _history(tmp)
    assert [int(r["epoch"]) for r in history] == list(range(1, EPOCHS + 1))
    assert [float(r["lr"]) for r in history] == pytest.approx(_expected_lrs(True, True), rel=1e-9)
    parser = _parsed(tmp, data)  # the training run's spec: its saved split is reused, not rebuilt
    n_items = len(parser.get_parsed_content("train#items"))
    assert n_items > len(parser.get_parsed_content("train#datalist")["training"])
    iterations = {
        int(m) for m in re.findall(r"Epoch: \d+/\d+, Iter: \d+/(\d+)", result.stdout + result.stderr)
    }
    full_batches = n_items // TINY["batch_size"]  # the loader drops a last partial batch (BatchNorm)
    assert iterations == {full_batches if n_items > TINY["batch_size"] else 1}, (
        "the trainer did not iterate over the augmented set"
    )
    assert (tmp / "models" / "model.pt").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("warmup, cosine", [(True, False), (False, True)])
def test_warmup_and_cosine_switch_independently(data, tmp_path, warmup, cosine):
    run_bundle(
        BUNDLE,
        "training",
        "train",
        tmp_path,
        dataset_dir=data,
        max_epochs=EPOCHS,
        minority_percent=0,
        warmup=str(warmup).lower(),
        cosine=str(cosine).lower(),
        **TINY,
    )
    assert [float(r["lr"]) for r in _history(tmp_path)] == pytest.approx(
        _expected_lrs(warmup, cosine), rel=1e-9
    )


@pytest.mark.slow
def test_evaluation_on_the_held_out_test_split(trained):
    tmp, _ = trained
    run_bundle(BUNDLE, "evaluating", "evaluate", tmp)
    with open(tmp / "output" / "eval" / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    test_items = load_datalist(tmp / "output" / "datalist.json")["test"]
    assert sorted(r["image"] for r in rows) == sorted(i["image"] for i in test_items)
    assert (tmp / "output" / "eval" / "confusion_matrix.png").is_file()


def test_depth_is_one_override():
    parser = ConfigParser(read_config(bundle_config(BUNDLE, "train")))
    parser.resolve_macro_and_relative_ids()  # expand the base, so that its nested ids can be set
    parser["pretrained"] = None
    parser["train#num_classes"] = 4  # set here so that no data set is needed
    for depth in (18, 101):
        parser["model_name"] = f"resnet{depth}d"
        net = parser.get_parsed_content("train#network_def", lazy=False)
        assert sum(isinstance(m, torch.nn.Conv2d) for m in net.modules()) > 0
        assert len(net.layer3) == {18: 2, 101: 23}[depth]
        assert net.fc.out_features == 4


@pytest.mark.slow
def test_metadata_and_network_io_verify_offline(trained):
    verify_bundle(BUNDLE, trained[0] / "models")


def test_minority_samples_are_seeded_spread_over_kinds_and_cycle_above_100_percent():
    from toolkit.data.minority import add_minority_samples

    items = [{"image": f"big{i}.png", "label": 0} for i in range(10)] + [
        {"image": f"small{i}.png", "label": 1} for i in range(4)
    ]
    out = add_minority_samples(items, 150, seed=1)
    synthetic = [i for i in out if i["synthesis"]]
    assert len(synthetic) == 6 and all(i["label"] == 1 for i in synthetic)
    sources = [i["image"] for i in synthetic]
    assert sorted(set(sources)) == [f"small{i}.png" for i in range(4)]  # all 4 used before any repeats
    assert max(sources.count(s) for s in sources) == 2
    kinds = [i["synthesis"] for i in synthetic]
    assert max(kinds.count(k) for k in kinds) - min(kinds.count(k) for k in set(kinds)) <= 1
    assert add_minority_samples(items, 150, seed=1) == out
    assert add_minority_samples(items, 150, seed=2) != out
    with pytest.raises(ValueError):
        add_minority_samples(items, -5)
    with pytest.raises(ValueError, match="single-label"):
        add_minority_samples([{"image": "a", "label": [0, 1]}], 10)


def test_class_weighted_loss_and_balanced_sampler_are_one_override_each(data, tmp_path):
    from torch.utils.data import WeightedRandomSampler

    parser = _parsed(
        tmp_path,
        data,
        loss="%configs/base/components.json#loss#weighted_cross_entropy",
        weighted_sampler=True,
        minority_percent=0,
    )
    weight = parser.get_parsed_content("loss").weight
    counts = [sum(i["label"] == c for i in parser.get_parsed_content("train#items")) for c in range(4)]
    # the rarest training class weighs most (weights computed on the training items)
    assert int(torch.argmax(weight)) == counts.index(min(counts)) and len(set(counts)) > 1
    assert isinstance(parser.get_parsed_content("train#sampler"), WeightedRandomSampler)
    assert parser.get_parsed_content("train#dataloader").sampler is parser.get_parsed_content("train#sampler")


def test_batchnorm_recalibration_is_one_override_and_runs_before_validation(data, tmp_path):
    from monai.handlers import ValidationHandler

    from toolkit.engines import BatchNormRecalibration

    kinds = [type(h) for h in _parsed(tmp_path, data).get_parsed_content("train#handlers")]
    assert kinds.index(BatchNormRecalibration) < kinds.index(ValidationHandler)
    assert _parsed(tmp_path, data).get_parsed_content("train#recalibration_loader") is None, "off by default"
    loader = _parsed(tmp_path, data, recalibrate_bn_images=6, image_size=32).get_parsed_content(
        "train#recalibration_loader"
    )
    assert len(loader.dataset) == 6 and loader.dataset[0]["image"].shape[-2:] == (32, 32)
