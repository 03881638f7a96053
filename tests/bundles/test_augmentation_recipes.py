"""Each bundle's augmentation is its study's recipe, written in its own config as MONAI transforms, built
by MONAI's ConfigParser as training builds it, and overridable from the command line into the training log."""

from __future__ import annotations

import math

import pytest
import torch
from monai.transforms import Compose, RandAffined, RandFlipd, RandomizableTrait, RandRotated

from tests.bundles.bundle_helpers import bundle_recipe, run_bundle
from toolkit.data import make_synthetic_dataset
from toolkit.data.minority import SYNTHESIS_KINDS
from toolkit.transforms import RandGaussianBlurKerneld, describe_transform

SIZE = 32
# (bundle, config) of every config whose training runs an augmentation list
RECIPES = [
    ("resnet18_brain_ct", "train"),
    ("pretrain_ssl", "supervised"),
    ("resnet50_pneumonia", "train"),
    ("deit_distilled_lung_histo", "train"),
    ("multiscale_resnet_cxr14", "train"),
    ("vgg16_cls", "train"),
    ("inception_v3_cls", "train"),
    ("densenet121_cls", "train"),
    ("efficientnet_b0_cls", "train"),
    ("resnet3d_adrenal", "train"),
    ("resnet_d_covid_cxr", "train"),
]


def _written(bundle, config="train"):
    """The augmentation list as the config states it (macros resolved, nothing built)."""
    return bundle_recipe(bundle, config)["augmentation"]


def _built(bundle, config="train", **ids):
    return bundle_recipe(bundle, config, image_size=SIZE, **ids).get_parsed_content("augmentation")


def _targets(bundle, config="train"):
    return [t["_target_"] for t in _written(bundle, config)]


def _image() -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.linspace(0, 1, SIZE), torch.linspace(0, 1, SIZE), indexing="ij")
    base = 0.2 + 0.6 * xx * (1 - 0.5 * yy)
    base[8:14, 20:26] = 0.95  # an asymmetric bright block so flips / rotations show
    return torch.stack([base * (1 - 0.1 * c) for c in range(3)])


def _run(transforms, seed: int, n: int = 6) -> list[torch.Tensor]:
    chain = Compose(transforms)
    chain.set_random_state(seed=seed)
    return [torch.as_tensor(chain({"image": _image()})["image"]) for _ in range(n)]


@pytest.mark.parametrize(("bundle", "config"), RECIPES)
def test_the_recipe_is_written_as_described_monai_transforms(bundle, config):
    written = _written(bundle, config)
    assert isinstance(written, list)
    for entry in written:
        assert entry["_desc_"].strip(), f"{bundle}: {entry['_target_']} does not say what the study reports"
        # MONAI's own transforms by their short name, the project's few by full path
        assert entry["_target_"].startswith("Rand") or entry["_target_"].startswith("toolkit.transforms.")
    built = _built(bundle, config)
    assert [type(t).__name__ for t in built] == [t.rsplit(".", 1)[-1] for t in _targets(bundle, config)]
    assert all(isinstance(t, RandomizableTrait) for t in built)


def test_pneumonia_one_affine_per_image_and_no_flip():
    assert _targets("resnet50_pneumonia") == ["RandAffined"]  # the study uses no flips
    (affine,) = _built("resnet50_pneumonia")
    grid = affine.rand_affine.rand_affine_grid
    assert affine.prob == 1.0
    assert grid.rotate_range == (math.radians(10),)
    assert tuple(grid.scale_range) == (0.1, 0.1)
    assert tuple(grid.translate_range) == (0.1 * SIZE, 0.1 * SIZE)  # 10 % of the input size


def test_brain_ct_flips_horizontally_and_rotates_15_degrees():
    built = _built("resnet18_brain_ct")
    (flip,) = [t for t in built if isinstance(t, RandFlipd)]
    assert flip.flipper.spatial_axis == 1  # left-right: the W axis of (C, H, W)
    (rotate,) = [t for t in built if isinstance(t, RandRotated)]
    assert rotate.rand_rotate.range_x == pytest.approx((-math.radians(15), math.radians(15)))
    assert _written("pretrain_ssl", "supervised") == _written("resnet18_brain_ct")  # the same study's chain


def test_chestxray14_bundles_share_the_study_file_and_flip_horizontally():
    lists = {b: _written(b) for b, _ in RECIPES if b.endswith(("_cxr14", "_cls"))}
    assert len(lists) == 5 and all(v == lists["multiscale_resnet_cxr14"] for v in lists.values())
    flips = [t for t in _written("vgg16_cls") if t["_target_"] == "RandFlipd"]
    assert [f["spatial_axis"] for f in flips] == [1]


def test_histopathology_flips_rarely_then_one_affine_with_shear():
    flip, affine = _built("deit_distilled_lung_histo")
    assert isinstance(flip, RandFlipd) and flip.prob == 0.1 and flip.flipper.spatial_axis == 1
    assert isinstance(affine, RandAffined) and tuple(affine.rand_affine.rand_affine_grid.shear_range) == (
        0.1,
        0.1,
    )


def test_adrenal_3d_flips_every_axis():
    flips = [t for t in _written("resnet3d_adrenal") if t["_target_"] == "RandFlipd"]
    assert sorted(f["spatial_axis"] for f in flips) == [0, 1, 2]


def test_covid_minority_synthesis_is_the_studys_four_kinds_in_its_config():
    parser = bundle_recipe("resnet_d_covid_cxr", image_size=SIZE)
    assert parser["augmentation"] == []
    syntheses = parser.get_parsed_content("minority_synthesis")
    assert tuple(syntheses) == SYNTHESIS_KINDS  # the kinds the datalist's synthetic items name
    (blur,) = syntheses["blur"]
    assert isinstance(blur, RandGaussianBlurKerneld) and blur.kernel_size == 3
    assert blur.sigma_ranges == [(4.0, 5.0), (6.0, 8.0)]


@pytest.mark.parametrize(
    "bundle", ["resnet18_brain_ct", "resnet50_pneumonia", "deit_distilled_lung_histo", "vgg16_cls"]
)
def test_built_augmentation_is_seeded_and_changes_the_image(bundle):
    first, again, other = _run(_built(bundle), 0), _run(_built(bundle), 0), _run(_built(bundle), 1)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert any(not torch.allclose(a, _image()) for a in first), "the augmentation never changed the image"
    assert any(not torch.allclose(a, b) for a, b in zip(first, other, strict=True)), (
        "seeds gave the same images"
    )
    assert all(a.shape == (3, SIZE, SIZE) for a in first)


def test_an_override_reaches_the_built_transform_and_its_description():
    rotate = _built("resnet18_brain_ct", **{"augmentation#0#prob": 0.3})[0]
    assert isinstance(rotate, RandRotated) and rotate.prob == 0.3
    text = describe_transform(rotate)
    assert text.startswith("RandRotated(") and "prob=0.3" in text and "range_x=(-0.2618, 0.2618)" in text


def test_command_line_override_shows_in_the_training_log(tmp_path):
    """`--augmentation#0#prob 0.3` as a user types it: the training log states the built value."""
    datalist = make_synthetic_dataset(
        tmp_path / "data", n_patients=6, images_per_patient=1, image_size=24, seed=1
    )
    result = run_bundle(
        "resnet18_brain_ct",
        "training",
        "train",
        tmp_path,
        dataset_dir=datalist,
        max_epochs=1,
        image_size=16,
        batch_size=4,
        pretrained=None,
        **{"augmentation#0#prob": 0.3},
    )
    log = result.stdout + result.stderr
    lines = [line for line in log.splitlines() if " - INFO - augmentation#" in line]
    assert len(lines) == 5, log[-3000:]
    assert "augmentation#0: RandRotated(" in lines[0] and "prob=0.3" in lines[0]
    assert (
        "augmentation#1: RandFlipd(" in lines[1] and "spatial_axis=1" in lines[1] and "prob=0.5" in lines[1]
    )
