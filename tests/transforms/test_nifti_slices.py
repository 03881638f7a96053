"""NIfTI through NiftiReader + SelectSliced on the real volumes in ../shared/data/nifti."""

from __future__ import annotations

import csv

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged

from toolkit.bundle import preprocessing_transforms
from toolkit.transforms import (
    ImageReadError,
    NiftiReader,
    SelectSlice,
    SelectSliced,
    find_read_error,
)


def _rows(shared_data):
    with open(shared_data / "nifti" / "manifest.csv", newline="") as f:
        return list(csv.DictReader(f))


def _loader(**slice_kwargs):
    return Compose(
        [
            LoadImaged("image", reader=NiftiReader(), image_only=True),
            EnsureChannelFirstd("image"),
            SelectSliced("image", **slice_kwargs),
        ]
    )


def test_every_3d_volume_gives_its_middle_slice(shared_data):
    rows = [r for r in _rows(shared_data) if len(r["shape"].split("x")) == 3]
    assert len(rows) >= 8
    load = _loader()
    for row in rows:
        x, y, z = (int(v) for v in row["shape"].split("x"))
        path = shared_data / "nifti" / row["file"]
        image = load({"image": str(path)})["image"]
        rgb = "R" in row["dtype"] and "G" in row["dtype"]
        assert tuple(image.shape) == ((3 if rgb else 1), x, y), row["file"]
        assert image.meta["slice_index"] == z // 2
        if not rgb:
            expected = np.asanyarray(nib.load(path).dataobj)[..., z // 2].astype(np.float32)
            np.testing.assert_allclose(image[0].numpy(), expected, rtol=1e-6, err_msg=row["file"])


def test_rgb24_nifti_becomes_three_channels(shared_data):
    path = shared_data / "nifti/ct/ct_perfusion.nii.gz"
    image = _loader(index=3)({"image": str(path)})["image"]
    raw = np.asanyarray(nib.load(path).dataobj)[..., 3]
    assert tuple(image.shape) == (3, 256, 286)
    np.testing.assert_array_equal(image[1].numpy(), raw["G"].astype(np.float32))


def test_4d_volume_needs_a_volume_index(shared_data):
    rows = [r for r in _rows(shared_data) if len(r["shape"].split("x")) == 4]
    assert len(rows) >= 2
    for row in rows:
        x, y, z, t = (int(v) for v in row["shape"].split("x"))
        path = str(shared_data / "nifti" / row["file"])
        with pytest.raises(
            RuntimeError, match="applying transform.*SelectSliced"
        ) as info:  # Compose wraps errors
            _loader()({"image": path})
        error = find_read_error(info.value)
        assert error is not None and row["file"].split("/")[-1] in str(error)
        assert f"{t} volumes" in str(error) and "volume=" in str(error)
        image = _loader(volume=1)({"image": path})["image"]
        assert tuple(image.shape) == (1, x, y)
        expected = np.asanyarray(nib.load(path).dataobj)[..., z // 2, 1].astype(np.float32)
        np.testing.assert_allclose(image[0].numpy(), expected)


def test_nan_volume_is_rejected_with_its_name(tmp_path):
    data = np.zeros((8, 9, 5), dtype=np.float32)
    data[2, 3, 2] = np.nan  # in the middle slice: the 2D chain reads only that slice
    path = tmp_path / "has_nan.nii.gz"
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    for chain in (_loader(), preprocessing_transforms({"image_size": 16})):
        with pytest.raises(RuntimeError, match="applying transform.*LoadImaged") as info:
            chain({"image": str(path), "label": 0})
        assert isinstance(find_read_error(info.value), ImageReadError)
        assert "has_nan.nii.gz" in str(find_read_error(info.value)) and "NaN" in str(
            find_read_error(info.value)
        )


def test_select_slice_array_form_and_2d_passthrough():
    volume = torch.arange(2 * 4 * 5 * 6, dtype=torch.float32).reshape(2, 4, 5, 6)
    out = SelectSlice(axis=0, index=1, volume=0)(volume)
    torch.testing.assert_close(out, volume[0:1, 1])
    flat = torch.rand(1, 7, 7)
    assert SelectSlice()(flat) is flat
    with pytest.raises(ImageReadError, match="NaN"):
        SelectSlice()(torch.full((1, 3, 3, 3), float("nan")))
    with pytest.raises(ImageReadError, match="out of range"):
        SelectSlice(index=9)(torch.rand(1, 4, 4, 4))
