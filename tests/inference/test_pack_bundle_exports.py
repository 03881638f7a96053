"""`cit export --format bundle` (``pack_bundle``) carries the ONNX export made from the packed weights, with its
record, so the copy's consumers (`cit infer`, the Deploy and Label apps) can run it; an export made from other
weights stays behind, said in one log line."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from infer_helpers import BUNDLE, IMAGE_SIZE, write_tiny_checkpoint
from PIL import Image

from toolkit.bundle.export import export_model, export_record_path, pack_bundle
from toolkit.inference.backends import OnnxRuntimeNetwork, current_onnx_export

pytest.importorskip("onnxruntime")


def test_a_current_onnx_export_is_packed_and_a_stale_one_is_not(tmp_path, caplog):
    models, images = tmp_path / "models", tmp_path / "images"
    models.mkdir()
    images.mkdir()
    write_tiny_checkpoint(BUNDLE, models)
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (40, 40), dtype=np.uint8)).save(images / f"img{i}.png")
    onnx = export_model(BUNDLE, "onnx", ckpt_dir=models, check_inputs=images).path

    packed = pack_bundle(BUNDLE, tmp_path / "packed", ckpt_dir=models) / "models"
    for path in (onnx, export_record_path(onnx)):
        assert (packed / path.name).read_bytes() == path.read_bytes()
    assert current_onnx_export(packed / "model.pt")[0] == packed / "model.onnx"  # what `cit infer` would run
    image = torch.rand(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    # the copy runs on its own: torch's exporter keeps the weights in model.onnx.data, which goes along
    torch.testing.assert_close(
        OnnxRuntimeNetwork(packed / "model.onnx")(image), OnnxRuntimeNetwork(onnx)(image)
    )

    write_tiny_checkpoint(BUNDLE, models, seed=1)  # retrained: the export beside the weights is stale now
    with caplog.at_level(logging.WARNING, logger="toolkit.bundle.export"):
        stale = pack_bundle(BUNDLE, tmp_path / "stale", ckpt_dir=models) / "models"
    assert (stale / "model.pt").is_file()
    assert not (stale / "model.onnx").exists() and not export_record_path(stale / "model.onnx").exists()
    assert "model.onnx not packed: its record model.onnx.json does not name these weights" in caplog.text
