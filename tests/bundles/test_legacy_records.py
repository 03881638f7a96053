"""Model records written before bundles stated their chain (the Python chain's arguments, no transforms)
are read as the recorded chain they stood for and rebuilt through the allow-list.

That these chains give, tensor for tensor, what the Python chain gave was tested against it before it
was deleted (``git show 1e0ead1:tests/bundles/test_legacy_records.py``); what stays tested here: the
shipped bundles' facts give exactly their train.json's chain, each intensity does what its name said,
and a bad record is refused naming the file."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.transforms import Compose
from PIL import Image

from toolkit.bundle import load_model_info
from toolkit.bundle.configs import read_config, trained_preprocessing
from toolkit.bundle.legacy_records import legacy_chain, legacy_intensity
from toolkit.transforms.recorded import build_steps, recorded_transforms

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
def test_an_older_2d_record_builds_its_chain(images, record):
    chain, channels = recorded_transforms(legacy_chain(record)), record.get("channels", 3)
    for path in images:
        image = chain({"image": path})["image"]
        assert image.shape == (channels, record["image_size"], record["image_size"]), path
        assert image.dtype == torch.float32 and bool(torch.isfinite(image).all()), path


@pytest.mark.parametrize("record", RECORDS_3D, ids=lambda r: f"3d-{len(r)}")
def test_an_older_3d_record_builds_its_chain(shared_data, record):
    chain, size = recorded_transforms(legacy_chain(record)), record["image_size"]
    shape = (record["channels"], *(size if isinstance(size, list) else [size] * 3))
    for name in ("brain_mri/FLAIR.nii.gz", "orientation/LPS.nii.gz", "misc/reoriented_anat_moved.nii"):
        image = chain({"image": str(shared_data / "nifti" / name)})["image"]
        assert image.shape == shape and bool(torch.isfinite(image).all()), name


def _intensity(name: str, image: torch.Tensor, channels: int = 1, **kwargs) -> torch.Tensor:
    return Compose(build_steps(legacy_intensity(name, kwargs, channels)))({"image": image})["image"]


def test_each_older_intensity_does_what_its_name_said():
    hu = torch.tensor([[[-1000.0, 0.0, 40.0, 80.0, 3000.0]]])
    torch.testing.assert_close(
        _intensity("ct_window", hu).as_tensor(), torch.tensor([[[0.0, 0.0, 0.5, 1.0, 1.0]]])
    )
    out = _intensity("minmax", hu)
    assert float(out.min()) == 0.0 and float(out.max()) == 1.0
    spiky = torch.cat([torch.linspace(0, 1, 1000), torch.tensor([1000.0])]).view(1, 1, -1)
    out = _intensity("percentile", spiky, lower=1, upper=99)
    assert float(out.max()) == 1.0 and float(out[0, 0, 500]) == pytest.approx(0.5, abs=0.02)
    ramp = torch.stack([torch.linspace(0.2, 0.8, 64).view(8, 8) * (1 - 0.1 * c) for c in range(3)])
    out = _intensity("zscore", ramp, 3)
    assert abs(float(out[0].mean())) < 1e-5 and float(out[0].std()) == pytest.approx(1.0, abs=0.05)
    out = _intensity("imagenet", ramp, 3)
    scaled = (ramp - ramp.min()) / (ramp.max() - ramp.min())
    torch.testing.assert_close(out[1].as_tensor(), (scaled[1] - 0.456) / 0.224, atol=1e-5, rtol=0)
    grey, scaled_grey = (
        _intensity("imagenet", ramp[:1], 1),
        (ramp[0] - ramp[0].min()) / (ramp[0].max() - ramp[0].min()),
    )
    mean, std = (0.485 + 0.456 + 0.406) / 3, (0.229 + 0.224 + 0.225) / 3  # one channel: the averages
    torch.testing.assert_close(grey[0].as_tensor(), (scaled_grey - mean) / std, atol=1e-5, rtol=0)
    assert legacy_intensity("none", None, 3) == []


@pytest.mark.parametrize(
    "record, words",
    [
        ({"intensity": "nope"}, "unknown intensity 'nope'"),
        ({"intensity": "ct_window", "intensity_kwargs": {"level": 3}}, "takes ['center', 'width']"),
        ({"intensity": "ct_window", "intensity_kwargs": {"width": 0}}, "width must be > 0"),
        ({"channels": 2}, "channels must be 1 or 3"),
        ({"spacing": 2.0}, "unknown preprocessing arguments ['spacing'] for a 2D model"),
        ({"spatial_dims": 3, "fit": "stretch"}, "fit must be one of"),
    ],
)
def test_an_older_record_that_cannot_be_read_is_refused_naming_the_file(tmp_path, record, words):
    doc = {
        "network": {"name": "resnet18"},
        "class_names": ["a", "b"],
        "preprocessing": {"image_size": 16, **record},
    }
    (tmp_path / "model_info.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=re.escape(words)) as info:
        load_model_info(tmp_path)
    assert str(tmp_path / "model_info.json") in str(info.value)


def test_an_older_record_on_disk_is_read_as_its_chain(tmp_path, images):
    record = {
        "image_size": 24,
        "reader_max_size": 24,
        "channels": 1,
        "colour": "grey",
        "intensity": "imagenet",
    }
    doc = {"network": {"name": "resnet18"}, "class_names": ["a", "b"], "preprocessing": record}
    (tmp_path / "model_info.json").write_text(json.dumps(doc))
    info = load_model_info(tmp_path, image_size=24, channels=1)
    assert info.preprocessing["transforms"] == legacy_chain(record)
    image = info.preprocessing_transforms(label_key=None)({"image": images[0]})["image"]
    assert image.shape == (1, 24, 24)


@pytest.mark.parametrize(
    "bundle", sorted(p.parent.parent.name for p in BUNDLES.glob("*/configs/inference.json"))
)
def test_a_shipped_bundles_study_model_reads_as_its_train_chain(bundle):
    """An untrained bundle stands in with its inference.json's ``study_model`` facts: they give exactly
    the record that training with the bundle's train.json writes."""
    study = read_config(BUNDLES / bundle / "configs" / "inference.json")["study_model"]["preprocessing"]
    assert legacy_chain(study) == trained_preprocessing(BUNDLES / bundle)["transforms"]
