"""The bundles' chains (loading, augmentation, normalisation in their train.json), built as training and
evaluation build them."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from monai.data import CacheDataset, DataLoader
from monai.transforms import Compose, RandomizableTrait
from PIL import Image

from tests.bundles.bundle_helpers import bundle_recipe
from toolkit.bundle import preprocessing_transforms
from toolkit.transforms import augmentation_steps
from toolkit.transforms.recorded import build_steps, record_steps

SIZE = 32


def _augmentation(bundle: str, **ids) -> list:
    """The bundle's augmentation list built by MONAI's ConfigParser, as its training builds it."""
    return bundle_recipe(bundle, image_size=SIZE, **ids).get_parsed_content("augmentation")


def _training_chain(bundle: str, **ids) -> Compose:
    """The bundle's training chain (``train_transforms``) at ``SIZE`` px, as its training builds it."""
    return bundle_recipe(bundle, image_size=SIZE, **ids).get_parsed_content("train_transforms")


# ---------------------------------------------------------------- augmentation


def test_augmentation_is_a_list_of_transforms_not_a_preset_name():
    assert not any(
        isinstance(t, RandomizableTrait)
        for t in _training_chain("resnet18_brain_ct", augmentation=[]).transforms
    )
    with pytest.raises(TypeError, match="the preset names are gone"):
        augmentation_steps("pneumonia")
    flat = augmentation_steps(Compose(_augmentation("resnet18_brain_ct")))
    assert (
        [type(t).__name__ for t in _training_chain("resnet18_brain_ct").transforms[6:11]]
        == [type(t).__name__ for t in flat]
        == ["RandRotated", "RandFlipd", "RandZoomd", "RandScaleIntensityd", "RandAdjustContrastd"]
    )


# ---------------------------------------------------------------- chains


@pytest.fixture
def png_files(tmp_path):
    paths = []
    for i, mode in enumerate(["L", "RGB", "I;16"]):
        rng = np.random.default_rng(i)
        if mode == "I;16":
            img = Image.fromarray((rng.random((40, 50)) * 60000).astype(np.uint16))
        else:
            img = Image.fromarray((rng.random((40, 50)) * 255).astype(np.uint8)).convert(mode)
        path = tmp_path / f"img{i}.png"
        img.save(path)
        paths.append(str(path))
    return paths


@pytest.mark.parametrize("channels", [1, 3])
def test_train_chain_gives_float_tensors_of_the_right_shape(png_files, shared_data, channels):
    chain = _training_chain("resnet18_brain_ct", channels=channels)
    files = [
        *png_files,
        str(shared_data / "dicom/mr/MR_small.dcm"),
        str(shared_data / "dicom/other/US1_J2KR.dcm"),
    ]
    for i, path in enumerate(files):
        out = chain({"image": path, "label": i % 2, "patient_id": "p1"})
        assert type(out["image"]) is torch.Tensor  # metadata dropped for training
        assert out["image"].shape == (channels, SIZE, SIZE) and out["image"].dtype == torch.float32
        assert out["label"].dtype == torch.int64 and out["label"].ndim == 0
        assert out["patient_id"] == "p1"


@pytest.mark.parametrize("builder", ["training_transforms", "minority_training_transforms"])
def test_augmentation_pads_with_black_under_imagenet_standardisation(tmp_path, builder):
    """A shifted training image is padded with black, the value black has at test time, not with
    the ImageNet mean (a mid grey no test image has): augmentation runs before mean / std."""
    from toolkit.transforms import minority

    pixels = np.full((SIZE, SIZE), 255, np.uint8)
    pixels[0, 0] = 0  # one black pixel: after min-max, white is 1 and black 0
    path = tmp_path / "white.png"
    Image.fromarray(pixels).save(path)
    shift_only = {  # the pneumonia study's affine, overridden as on the command line: shifts of 40 %
        "augmentation#0#rotate_range": 0.0,
        "augmentation#0#scale_range": [0.0, 0.0],
        "augmentation#0#translate_range": [0.4 * SIZE, 0.4 * SIZE],
    }
    augmentation = _augmentation("resnet50_pneumonia", **shift_only)
    if builder == "training_transforms":
        recipe = bundle_recipe("resnet50_pneumonia", image_size=SIZE, channels=1, **shift_only)
        chain = recipe.get_parsed_content("train_transforms")
    else:
        recipe = bundle_recipe("resnet_d_covid_cxr", image_size=SIZE, channels=1)
        parts = ("minority_synthesis", "loading", "normalisation")
        syntheses, loading, normalisation = (recipe.get_parsed_content(part) for part in parts)
        chain = minority.minority_training_transforms(
            syntheses, loading, normalisation, augmentation=augmentation
        )
    chain.set_random_state(seed=0)
    standardise = Compose(build_steps(record_steps(recipe.get_parsed_content("normalisation"))))
    black, white = standardise({"image": torch.tensor([[[0.0, 1.0]]])})["image"][0, 0]
    outs = torch.stack([chain({"image": str(path), "label": 0})["image"] for _ in range(8)])
    near_black = float((outs - black).abs().lt(0.05).float().mean())
    mid_grey = float(((outs > black + 0.5) & (outs < white - 0.5)).float().mean())
    assert black < -1.0 and white > 1.0  # the ImageNet mean / std did run
    assert mid_grey < 0.05, f"{mid_grey:.0%} of the pixels are neither black nor white (grey padding)"
    assert near_black > 0.1, "the shifts never padded the image"


def test_multi_hot_label_becomes_float_vector(png_files):
    out = preprocessing_transforms({"image_size": SIZE})({"image": png_files[0], "label": [0, 1, 1]})
    torch.testing.assert_close(out["label"], torch.tensor([0.0, 1.0, 1.0]))


def test_eval_chain_is_deterministic_and_gives_plain_tensors(shared_data):
    recipe = bundle_recipe("resnet50_pneumonia", image_size=SIZE)
    chain = preprocessing_transforms(recipe.get_parsed_content("evaluation_preprocessing"))
    assert not any(isinstance(t, RandomizableTrait) for t in chain.transforms)
    path = str(shared_data / "dicom/ct/CT_small.dcm")
    a, b = chain({"image": path, "label": 1}), chain({"image": path, "label": 1})
    torch.testing.assert_close(a["image"], b["image"])
    assert type(a["image"]) is torch.Tensor  # no MetaTensor: batches of mixed formats must collate


def test_deterministic_steps_come_first_and_cache(png_files):
    chain = _training_chain("deit_distilled_lung_histo")
    kinds = [isinstance(t, RandomizableTrait) for t in chain.transforms]
    first_random = kinds.index(True)
    assert not any(kinds[:first_random]) and first_random >= 5
    data = [{"image": p, "label": 0} for p in png_files]
    dataset = CacheDataset(data, chain, num_workers=0, progress=False)
    batch = next(iter(DataLoader(dataset, batch_size=3)))
    assert batch["image"].shape == (3, 3, SIZE, SIZE)
    pickle.dumps(chain)  # DataLoader workers need picklable transforms


def test_blur_uses_a_3x3_gaussian_kernel():
    from toolkit.transforms import RandGaussianBlurKerneld

    image = torch.zeros(1, 7, 7)
    image[0, 3, 3] = 1.0  # impulse: the output is the kernel itself
    out = RandGaussianBlurKerneld("image", sigma_ranges=[(4.0, 4.0)])({"image": image})["image"]
    g = torch.exp(-torch.tensor([1.0, 0.0, 1.0]) / (2 * 4.0**2))
    kernel = torch.outer(g, g) / torch.outer(g, g).sum()
    torch.testing.assert_close(torch.as_tensor(out)[0, 2:5, 2:5], kernel)
    assert float(torch.as_tensor(out)[0, :2].abs().sum()) == 0.0  # nothing beyond 3x3
