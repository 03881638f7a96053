"""PNG / JPEG files written by the tests, read by RasterReader and the classification chain."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from toolkit.bundle import preprocessing_transforms
from toolkit.transforms import ImageReadError, RasterReader, find_read_error


def _gradient(height: int, width: int) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width]
    return (xx / width + yy / height) / 2


def test_16bit_png_keeps_its_depth_and_orientation(tmp_path):
    pixels = (_gradient(40, 60) * 65535).astype(np.uint16)
    path = tmp_path / "grey16.png"
    Image.fromarray(pixels).save(path)
    arr, meta = RasterReader().get_data(str(path))
    assert arr.shape == (40, 60) and meta["original_channel_dim"] == "no_channel"
    np.testing.assert_array_equal(arr, pixels.astype(np.float32))
    image = preprocessing_transforms({"image_size": 32}, label_key=None)({"image": str(path)})["image"]
    assert tuple(image.shape) == (3, 32, 32) and image.dtype == torch.float32
    assert float(image.min()) == 0.0 and float(image.max()) == 1.0
    assert torch.unique(image[0]).numel() > 256  # not squeezed to 8 bits
    assert image[0, 0, -1] > image[0, 0, 0]  # columns stay columns (no transpose)


def test_rgb_jpeg_comes_out_three_channel_in_unit_range(tmp_path):
    rgb = np.stack([_gradient(50, 70), 1 - _gradient(50, 70), np.full((50, 70), 0.5)], axis=-1)
    path = tmp_path / "colour.jpg"
    Image.fromarray((rgb * 255).astype(np.uint8)).save(path, quality=95)
    image = preprocessing_transforms({"image_size": 32}, label_key=None)({"image": str(path)})["image"]
    assert tuple(image.shape) == (3, 32, 32) and image.dtype == torch.float32
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    assert image[0].mean() > image[2].mean() * 0.5  # channels kept apart
    grey = preprocessing_transforms({"image_size": 32, "channels": 1}, label_key=None)({"image": str(path)})[
        "image"
    ]
    assert tuple(grey.shape) == (1, 32, 32)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "1", "I;16"])
def test_colour_modes(tmp_path, mode):
    base = Image.fromarray((_gradient(20, 30) * 255).astype(np.uint8)).convert("RGB")
    image = (
        base.convert(mode)
        if mode != "I;16"
        else Image.fromarray((_gradient(20, 30) * 60000).astype(np.uint16))
    )
    path = tmp_path / f"mode_{mode.replace(';', '')}.png"
    image.save(path)
    arr, meta = RasterReader().get_data(str(path))
    colour = mode in ("RGBA", "P")
    assert arr.shape == ((20, 30, 3) if colour else (20, 30)), mode
    assert meta["original_channel_dim"] == (-1 if colour else "no_channel")
    assert arr.std() > 0


def test_jpeg_draft_is_close_to_full_decode(tmp_path):
    rgb = np.stack([_gradient(1024, 768), 1 - _gradient(1024, 768), _gradient(1024, 768) ** 2], axis=-1)
    path = tmp_path / "large.jpg"
    Image.fromarray((rgb * 255).astype(np.uint8)).save(path, quality=90)
    fast = preprocessing_transforms({"image_size": 96, "reader_max_size": 96}, label_key=None)(
        {"image": str(path)}
    )["image"]
    full = preprocessing_transforms({"image_size": 96}, label_key=None)({"image": str(path)})["image"]
    _, meta = RasterReader(max_size=96).get_data(str(path))
    assert meta["shrink_factor"] >= 4  # draft decoded at 1/4 or 1/8 scale
    difference = (fast - full).abs()
    assert float(difference.mean()) < 0.01 and float(difference.max()) < 0.08


def test_unreadable_raster_names_the_file(tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    with pytest.raises(ImageReadError, match="broken.png"):
        RasterReader().get_data(str(path))
    with pytest.raises(RuntimeError, match="applying transform.*LoadImaged") as info:
        preprocessing_transforms({"image_size": 16})({"image": str(path), "label": 0})
    assert "broken.png" in str(find_read_error(info.value))


def test_float_tiff_with_nan_is_rejected(tmp_path):
    data = np.ones((10, 12), dtype=np.float32)
    data[3, 4] = np.nan
    path = tmp_path / "float_nan.tif"
    Image.fromarray(data).save(path)
    with pytest.raises(ImageReadError, match=r"float_nan\.tif.*NaN"):
        RasterReader().get_data(str(path))
