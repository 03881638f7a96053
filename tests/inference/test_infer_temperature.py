"""`cit infer` applies the temperature saved beside the weights (``temperature.json``, written by
`cit report --save-temperature`): probabilities become exactly softmax(logits / T)."""

from __future__ import annotations

import json

import numpy as np
import torch
from infer_helpers import infer_args, make_dicom, write_tiny_checkpoint
from PIL import Image

from toolkit.bundle import load_bundle
from toolkit.cli import main
from toolkit.evaluation.calibration import TEMPERATURE_FILE, save_temperature
from toolkit.inference.runner import EXIT_OK

T = 2.5


def _probabilities(out) -> dict[str, np.ndarray]:
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert all(r["status"] == "ok" for r in rows), rows
    names = [k for k in rows[0] if k.startswith("prob_")]
    return {r["path"]: np.array([r[k] for k in names]) for r in rows}


def test_temperature_beside_the_weights_scales_the_logits(bundle_dir, tmp_path):
    inputs = tmp_path / "in"
    rng = np.random.default_rng(5)
    make_dicom(inputs / "IM1", study=1, series="a", index=0, seed=3)
    inputs.mkdir(exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (40, 36), dtype=np.uint8)).save(inputs / "grey.png")
    Image.fromarray(rng.integers(0, 256, (30, 44, 3), dtype=np.uint8)).save(inputs / "colour.jpg")
    ckpt = write_tiny_checkpoint(bundle_dir, tmp_path / "models", seed=1)

    assert main(infer_args(bundle_dir, ckpt, inputs, tmp_path / "plain")) == EXIT_OK
    save_temperature(T, ckpt.parent / TEMPERATURE_FILE)
    assert main(infer_args(bundle_dir, ckpt, inputs, tmp_path / "scaled")) == EXIT_OK
    plain, scaled = _probabilities(tmp_path / "plain"), _probabilities(tmp_path / "scaled")

    # the logits, computed here with the bundle's own preprocessing and network
    bundle = load_bundle(bundle_dir, ckpt_path=ckpt)
    for path, probs in scaled.items():
        x = torch.as_tensor(bundle.preprocessing({"image": str(inputs / path)})["image"]).float()
        with torch.no_grad():
            logits = bundle.network(x[None])[0].double()
        np.testing.assert_allclose(probs, torch.softmax(logits / T, 0).numpy(), atol=1e-5, err_msg=path)
        np.testing.assert_allclose(plain[path], torch.softmax(logits, 0).numpy(), atol=1e-5, err_msg=path)
        # the same statement from the two runs alone: log p is the logits up to a constant
        np.testing.assert_allclose(
            probs,
            torch.softmax(torch.log(torch.as_tensor(plain[path])) / T, 0).numpy(),
            atol=1e-6,
            err_msg=path,
        )
        assert probs.max() < plain[path].max()  # T > 1 softens
