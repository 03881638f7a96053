"""Model records written before bundles stated their chain (``classification_transforms`` arguments) are
read as the same recorded chain, rebuilt through the allow-list, and give the same tensors as before."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from toolkit.bundle.configs import read_config, trained_preprocessing
from toolkit.bundle.legacy_records import legacy_chain
from toolkit.transforms import classification_transforms
from toolkit.transforms.recorded import recorded_transforms

BUNDLES = Path(__file__).resolve().parents[2] / "bundles"
RECORDS_2D = [
    {"image_size": 32, "channels": 3, "colour": "rgb", "intensity": "minmax"},
    {"image_size": 32, "channels": 1, "colour": "grey", "intensity": "imagenet"},
    {"image_size": 32, "channels": 3, "colour": "grey", "intensity": "imagenet"},
    {
        "image_size": 32,
        "channels": 3,
        "intensity": "imagenet",
        "intensity_kwargs": {"mean": [0.5] * 3, "std": [0.5] * 3},
    },
    {
        "image_size": 32,
        "channels": 1,
        "intensity": "ct_window",
        "intensity_kwargs": {"center": 40, "width": 400},
    },
    {"image_size": 32, "channels": 1, "colour": "grey", "intensity": "ct_window"},
    {
        "image_size": 32,
        "channels": 3,
        "intensity": "percentile",
        "intensity_kwargs": {"lower": 1, "upper": 99},
    },
    {"image_size": 32, "channels": 1, "intensity": "zscore", "intensity_kwargs": {"nonzero": True}},
    {"image_size": 32, "channels": 3, "intensity": "none"},
    {
        "image_size": 24,
        "reader_max_size": 24,
        "intensity": "imagenet",
        "alpha": "black",
        "resize_mode": "bilinear",
    },
    {"image_size": 24, "channels": 1, "nifti_slice": 3},
]
RECORDS_3D = [
    {"spatial_dims": 3, "image_size": 16, "channels": 1, "colour": "grey"},
    {"spatial_dims": 3, "image_size": [16, 12, 8], "channels": 1, "spacing": 2.0, "fit": "pad_crop"},
    {"spatial_dims": 3, "image_size": 16, "channels": 1, "intensity": "zscore", "spacing": [1, 1.5, 2]},
    {"spatial_dims": 3, "image_size": 16, "channels": 3, "resize_mode": "nearest", "axcodes": "LPS"},
]


@pytest.fixture(scope="module")
def images(shared_data, tmp_path_factory) -> list[str]:
    """Grey, colour and transparent raster images of odd sizes, a CT and an MR DICOM, a NIfTI volume."""
    folder, rng = tmp_path_factory.mktemp("legacy"), np.random.default_rng(0)
    for name, shape in (("grey.png", (70, 45)), ("colour.jpg", (40, 90, 3)), ("rgba.png", (40, 90, 4))):
        Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(folder / name)
    return [str(p) for p in sorted(folder.iterdir())] + [
        str(shared_data / "dicom/ct/CT_small.dcm"),
        str(shared_data / "dicom/mr/MR_small.dcm"),
        str(shared_data / "nifti/brain_mri/FLAIR.nii.gz"),
    ]


@pytest.mark.parametrize("record", RECORDS_2D, ids=lambda r: f"{r.get('intensity', 'minmax')}-{len(r)}")
def test_an_older_2d_record_gives_the_tensors_it_gave(images, record):
    old, new = classification_transforms("eval", **record), recorded_transforms(legacy_chain(record))
    for path in images:
        assert torch.equal(old({"image": path})["image"], new({"image": path})["image"]), path


@pytest.mark.parametrize("record", RECORDS_3D, ids=lambda r: f"3d-{len(r)}")
def test_an_older_3d_record_gives_the_tensors_it_gave(shared_data, record):
    old, new = classification_transforms("eval", **record), recorded_transforms(legacy_chain(record))
    for name in ("brain_mri/FLAIR.nii.gz", "orientation/LPS.nii.gz", "misc/reoriented_anat_moved.nii"):
        path = shared_data / "nifti" / name
        assert torch.equal(old({"image": str(path)})["image"], new({"image": str(path)})["image"]), path


@pytest.mark.parametrize(
    "bundle", sorted(p.parent.parent.name for p in BUNDLES.glob("*/configs/inference.json"))
)
def test_a_shipped_bundles_study_model_reads_as_its_train_chain(bundle):
    """An untrained bundle stands in with its inference.json's ``study_model`` facts: they give exactly
    the record that training with the bundle's train.json writes."""
    study = read_config(BUNDLES / bundle / "configs" / "inference.json")["study_model"]["preprocessing"]
    assert legacy_chain(study) == trained_preprocessing(BUNDLES / bundle)["transforms"]
