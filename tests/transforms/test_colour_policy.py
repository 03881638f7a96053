"""The colour policy of the classification chain: grey / colour / transparent files written here,
what the network receives under `colour` and `alpha`, and the log line that states it."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from toolkit.bundle import preprocessing_transforms
from toolkit.transforms import AsChannels, RasterReader, utility

SIZE = 16


def _rgb(tmp_path, name="colour.png") -> tuple[str, np.ndarray]:
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    rgb = np.stack([xx * 16, yy * 16, np.full((SIZE, SIZE), 40)], axis=-1).astype(np.uint8)
    path = tmp_path / name
    Image.fromarray(rgb).save(path)
    return str(path), rgb


def _rgba(tmp_path) -> tuple[str, np.ndarray, np.ndarray]:
    rgb = np.full((SIZE, SIZE, 3), 200, np.uint8)
    alpha = np.zeros((SIZE, SIZE), np.uint8)
    alpha[:, SIZE // 2 :] = 255  # left half transparent, right half opaque
    path = tmp_path / "transparent.png"
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(path)
    return str(path), rgb, alpha


def _chain(**facts):
    """The evaluation chain of a model recorded with these facts (no intensity step)."""
    return preprocessing_transforms({"image_size": SIZE, "intensity": "none", **facts}, label_key=None)


def test_default_keeps_colour_and_grey_policy_gives_luminance_on_every_channel(tmp_path):
    path, rgb = _rgb(tmp_path)
    kept = _chain()({"image": path})["image"]  # default colour="rgb": today's behaviour
    np.testing.assert_allclose(kept.numpy(), np.moveaxis(rgb, -1, 0).astype(np.float32))
    grey = _chain(colour="grey")({"image": path})["image"]
    assert tuple(grey.shape) == (3, SIZE, SIZE)
    luminance = np.asarray(Image.fromarray(rgb).convert("L"), dtype=np.float32)  # Pillow: BT.601
    np.testing.assert_allclose(grey[0].numpy(), luminance, atol=0.6)
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])
    one = _chain(colour="gray", channels=1)({"image": path})["image"]
    assert tuple(one.shape) == (1, SIZE, SIZE) and torch.equal(one[0], grey[0])
    # grey files are repeated to 3 channels under both policies
    Image.fromarray(luminance.astype(np.uint8)).save(tmp_path / "grey.png")
    for colour in ("rgb", "grey"):
        out = _chain(colour=colour)({"image": str(tmp_path / "grey.png")})["image"]
        assert tuple(out.shape) == (3, SIZE, SIZE) and torch.equal(out[0], out[2])


def test_alpha_dropped_or_composited_on_black(tmp_path):
    path, rgb, alpha = _rgba(tmp_path)
    dropped, _ = RasterReader().get_data(path)
    np.testing.assert_array_equal(dropped, rgb.astype(np.float32))  # default: alpha ignored
    black, meta = RasterReader(alpha="black").get_data(path)
    assert meta["mode"] == "RGBA" and black.shape == (SIZE, SIZE, 3)
    assert black[:, : SIZE // 2].max() == 0 and black[:, SIZE // 2 :].min() == 200
    out = _chain(alpha="black", colour="grey", channels=1)({"image": path})["image"]
    assert float(out[0, :, 0].max()) == 0.0 and float(out[0, :, -1].min()) == pytest.approx(200, abs=0.6)
    la = tmp_path / "la.png"
    Image.fromarray(np.dstack([np.full((SIZE, SIZE), 90, np.uint8), alpha]), "LA").save(la)
    grey_black, _ = RasterReader(alpha="black").get_data(str(la))
    assert grey_black.shape == (SIZE, SIZE) and grey_black[0, 0] == 0 and grey_black[0, -1] == 90


def test_policy_is_logged_once_per_run_and_bad_values_are_refused(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(utility, "_LOGGED", set())
    with caplog.at_level(logging.INFO, logger="toolkit.transforms.utility"):
        for _ in range(3):
            _chain(colour="grey", alpha="black")
    lines = [r.getMessage() for r in caplog.records if "colour policy" in r.getMessage()]
    assert lines == [
        "colour policy 'grey': colour images are converted to luminance (BT.601), then every image is repeated "
        "to 3 channel(s); RGBA / LA / transparent palette: images are composited on black (pixel x opacity)"
    ]
    with pytest.raises(ValueError, match=r"colour must be one of \('rgb', 'grey'\), got 'sepia'"):
        _chain(colour="sepia")
    with pytest.raises(ValueError, match=r"alpha must be one of \('drop', 'black'\), got 'white'"):
        _chain(alpha="white")
    with pytest.raises(ValueError, match="colour must be one of"):
        AsChannels(3, colour="cmyk")
