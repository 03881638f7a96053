"""A 2D bundle's loading chain in its train.json, recorded with the model, rebuilt from the record only
through allowed transform classes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from tests.bundles.bundle_helpers import bundle_recipe
from toolkit.bundle import chain_preprocessing, load_model_info, preprocessing_transforms
from toolkit.bundle.description import write_model_info
from toolkit.bundle.legacy_records import legacy_chain
from toolkit.networks import input_normalisation
from toolkit.transforms import RecordedChainError
from toolkit.transforms.recorded import build_steps, check_record, record_steps

SIZE = 32


def _older_record(model_name, image_size, channels, colour, intensity, **volume) -> dict:
    """The preprocessing a model record held before bundles stated their chain: the Python chain's
    arguments, with the mean / std of the weights for ``imagenet``."""
    given = input_normalisation(model_name, channels) if intensity == "imagenet" else None
    return {
        "image_size": image_size,
        "reader_max_size": image_size,
        "channels": channels,
        "colour": colour,
        "intensity": intensity,
        "intensity_kwargs": given,
        **volume,
    }


def _files(shared_data, tmp_path) -> list[str]:
    """Grey and colour PNG / JPEG of odd sizes, a CT and an MR DICOM, a NIfTI volume."""
    rng = np.random.default_rng(0)
    grey, rgb = tmp_path / "grey.png", tmp_path / "colour.jpg"
    Image.fromarray(rng.integers(0, 255, (70, 45), dtype=np.uint8)).save(grey)
    Image.fromarray(rng.integers(0, 255, (40, 90, 3), dtype=np.uint8)).save(rgb)
    return [
        str(grey),
        str(rgb),
        str(shared_data / "dicom/ct/CT_small.dcm"),
        str(shared_data / "dicom/mr/MR_small.dcm"),
        str(shared_data / "nifti/brain_mri/FLAIR.nii.gz"),
    ]


def _assert_same_tensors(chains: tuple, paths: list[str]) -> None:
    """Both chains give equal tensors for every file."""
    for path in paths:
        item = {"image": path, "label": 1}
        assert torch.equal(*(chain(dict(item))["image"] for chain in chains)), path


@pytest.mark.parametrize(
    "bundle, ids",
    [
        ("resnet18_brain_ct", {}),
        ("deit_distilled_lung_histo", {}),
        ("resnet50_pneumonia", {"model_name": "tf_efficientnet_lite0", "channels": 1}),
    ],
)
def test_the_bundles_chain_is_the_one_its_older_records_read_as(shared_data, tmp_path, bundle, ids):
    """The record holds the facts other parts read, as records did before, and those facts alone read
    as exactly this chain (``toolkit.bundle.legacy_records``: models trained before stay valid).
    Training runs the same loading and normalisation: without augmentation it gives the same tensors."""
    recipe = bundle_recipe(bundle, image_size=SIZE, **ids)
    prep = recipe.get_parsed_content("evaluation_preprocessing")
    model_name, channels, colour = (recipe[k] for k in ("model_name", "channels", "colour"))
    old = _older_record(model_name, SIZE, channels, colour, "imagenet")
    assert {k: prep[k] for k in old} == old
    json.dumps(prep)  # the record is plain JSON
    assert legacy_chain(old) == prep["transforms"]
    unaugmented = bundle_recipe(bundle, image_size=SIZE, augmentation=[], **ids)
    chains = (preprocessing_transforms(prep), unaugmented.get_parsed_content("train_transforms"))
    _assert_same_tensors(chains, _files(shared_data, tmp_path))


@pytest.mark.parametrize(
    "ids", [{}, {"fit": "pad_crop", "spacing": [6.0, 6.0, 8.0], "image_size": [20, 24, 16]}]
)
def test_the_3d_bundles_chain_is_the_one_its_older_records_read_as(shared_data, ids):
    """The same for volumes: ``spacing`` and ``fit`` switch steps of the JSON chain on and off as the
    older records' facts do; a 4D series is refused."""
    recipe = bundle_recipe("resnet3d_adrenal", **ids)
    prep = recipe.get_parsed_content("evaluation_preprocessing")
    facts = {k: recipe[k] for k in ("image_size", "channels", "colour", "spatial_dims", "spacing", "fit")}
    old = _older_record(recipe["model_name"], intensity="minmax", **facts)
    old.pop("reader_max_size")  # 3D readers take no size limit
    assert {k: v for k, v in prep.items() if k != "transforms" and v is not None} == {
        k: v for k, v in old.items() if v is not None
    }
    assert legacy_chain(old) == prep["transforms"]
    steps = [step["_target_"].rpartition(".")[2] for step in prep["transforms"]]
    assert ("Spacingd" in steps) == (facts["spacing"] is not None)
    assert steps[-1] == {"resize": "Resized", "pad_crop": "ResizeWithPadOrCropd"}[facts["fit"]]
    unaugmented = bundle_recipe("resnet3d_adrenal", augmentation=[], **ids)
    evaluation = preprocessing_transforms(prep)
    chains = (evaluation, unaugmented.get_parsed_content("train_transforms"))
    volumes = [
        str(shared_data / "nifti" / name)
        for name in ("brain_mri/FLAIR.nii.gz", "misc/reoriented_anat_moved.nii")
    ]
    _assert_same_tensors(chains, volumes)
    with pytest.raises(RuntimeError, match="applying transform"):
        evaluation({"image": str(shared_data / "nifti/brain_4d/example4d.nii.gz")})


def test_an_override_of_the_chain_is_recorded_and_changes_the_input(tmp_path):
    path = tmp_path / "grey.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (70, 45), dtype=np.uint8)).save(path)
    default = bundle_recipe("resnet18_brain_ct", image_size=SIZE).get_parsed_content(
        "evaluation_preprocessing"
    )
    changed = bundle_recipe("resnet18_brain_ct", image_size=SIZE, **{"loading#4#mode": "bilinear"})
    changed = changed.get_parsed_content("evaluation_preprocessing")
    assert [s["_target_"] for s in changed["transforms"]][4] == "monai.transforms.Resized"
    assert changed["transforms"][4]["mode"] == "bilinear" and default["transforms"][4]["mode"] == "area"
    a, b = (
        preprocessing_transforms(p, label_key=None)({"image": str(path)})["image"] for p in (default, changed)
    )
    assert a.shape == b.shape == (3, SIZE, SIZE) and not torch.equal(a, b)


def test_a_built_transform_cannot_be_recorded():
    recipe = bundle_recipe("resnet18_brain_ct", **{"loading#1#_mode_": "default"})
    with pytest.raises(RuntimeError) as err:  # MONAI's parser names the expression, the cause says why
        recipe.get_parsed_content("evaluation_preprocessing")
    assert isinstance(err.value.__cause__, RecordedChainError)
    assert str(err.value.__cause__).startswith(
        'loading#1: a built EnsureChannelFirstd; write it with "_mode_"'
    )


@pytest.mark.parametrize(
    "step, named",
    [
        ({"_target_": "os.system", "command": "touch /tmp/x"}, "outside the allowed namespaces"),
        ({"_target_": "toolkit.transforms.utility.MetaTensor", "x": [0]}, "not a transform class"),
        ({"_target_": "toolkit.transforms.readers.os.system"}, "does not exist"),
        ({"_target_": "monai.transforms.SaveImaged", "keys": "image"}, "writes files"),
        (
            {"_target_": "monai.transforms.Lambdad", "keys": "image", "func": "$print"},
            "runs a given function",
        ),
        (
            {"_target_": "monai.transforms.Resized", "spatial_size": "$__import__('os').getcwd()"},
            "expression",
        ),
        ({"_target_": "monai.transforms.Resized", "spatial_size": "@image_size"}, "reference"),
        (
            {"_target_": "monai.transforms.Resized", "_mode_": "debug", "spatial_size": [4, 4]},
            "'_mode_' is not allowed",
        ),
        ({"_target_": "monai.transforms.NoSuchThing"}, "does not exist"),
    ],
)
def test_a_record_naming_code_is_refused(step, named):
    with pytest.raises(RecordedChainError, match=named):
        build_steps([step])


def test_a_model_whose_record_names_a_foreign_class_is_refused(tmp_path):
    prep = bundle_recipe("resnet18_brain_ct", image_size=SIZE).get_parsed_content("evaluation_preprocessing")
    network = {"name": "resnet18", "num_classes": 2, "in_channels": 3}
    write_model_info(tmp_path, network, ["a", "b"], prep)
    info = load_model_info(tmp_path)  # the record as written loads and rebuilds
    assert info.preprocessing["transforms"] == prep["transforms"]
    assert len(info.preprocessing_transforms().transforms) == len(prep["transforms"]) + 2  # + tensors, label
    doc = json.loads((tmp_path / "model_info.json").read_text())
    doc["preprocessing"]["transforms"][2]["_target_"] = "subprocess.Popen"
    (tmp_path / "model_info.json").write_text(json.dumps(doc))
    with pytest.raises(RecordedChainError) as err:
        load_model_info(tmp_path)
    text = str(err.value)
    assert str(tmp_path / "model_info.json") in text and "preprocessing#transforms#2" in text
    assert "'subprocess.Popen' is outside the allowed namespaces" in text and "\n" not in text


def test_recording_keeps_exactly_the_given_arguments():
    recipe = bundle_recipe("resnet18_brain_ct", image_size=SIZE)
    loading = record_steps(recipe.get_parsed_content("loading"), "loading")
    assert loading[0] == {
        "_target_": "monai.transforms.LoadImaged",
        "keys": "image",
        "image_only": True,
        "reader": {
            "_target_": "toolkit.transforms.MedicalImageReader",
            "max_size": SIZE,
            "dicom_frame": "reject",
            "alpha": "drop",
            "nifti_slice": "middle",
        },
    }
    check_record(loading)
    prep = chain_preprocessing(SIZE, 3, "grey", recipe.get_parsed_content("loading"), [])
    assert prep["intensity"] == "minmax" and prep["reader_max_size"] == SIZE
