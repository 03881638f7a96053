"""`cit infer --precision bf16`: PyTorch under CPU bf16 autocast where oneDNN runs bf16 natively, named in
run.json and every row, and refused in one line on a CPU without it (or with an ONNX backend)."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import torch
from infer_helpers import BUNDLE
from PIL import Image

from tests.bundles.test_model_info import _cit
from toolkit.inference import backends


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bf16_inputs")
    rng = np.random.default_rng(0)
    for i in range(6):
        pixels = np.clip(rng.uniform(30, 220) + 60 * rng.standard_normal((40, 40)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"img{i}.png")
    return folder


def _infer(bundle_dir, ckpt, images, out, *options):
    return _cit(
        "infer",
        "--bundle",
        str(bundle_dir),
        "--ckpt-path",
        str(ckpt),
        "--input",
        str(images),
        "--output",
        str(out),
        "--device",
        "cpu",
        "--workers",
        "0",
        "--no-progress",
        *options,
    )


def _rows(out) -> dict[str, dict]:
    with open(out / "predictions.csv", newline="") as f:
        return {row["path"]: row for row in csv.DictReader(f)}


def test_bf16_is_refused_in_one_line_on_a_cpu_without_native_bf16(
    bundle_dir, tiny_ckpt, images, tmp_path, monkeypatch
):
    monkeypatch.setattr(backends, "cpu_has_native_bf16", lambda: False)  # this machine's answer, reversed
    result = _infer(bundle_dir, tiny_ckpt, images, tmp_path / "out", "--precision", "bf16")
    lines = [line for line in result.stderr.splitlines() if line.startswith("cit infer")]
    assert result.returncode == 1 and len(lines) == 1 and "--precision bf16 refused" in lines[0], (
        result.stderr
    )
    assert not (tmp_path / "out" / "predictions.csv").exists()
    # bf16 is a precision of the PyTorch backend: with an ONNX backend it is refused, whatever the CPU
    monkeypatch.undo()
    result = _infer(
        bundle_dir, tiny_ckpt, images, tmp_path / "onnx", "--precision", "bf16", "--backend", "onnxruntime"
    )
    assert result.returncode == 1 and "a precision of the pytorch backend" in result.stderr


def _checked_model(tiny_ckpt, images, tmp_path, *guard: str, classes: int = 3):
    """A copy of the tiny model with a recorded split (the test images as validation, labels cycling through
    ``classes``) and its bf16 check."""
    models, output = tmp_path / "models", tmp_path / "output"
    shutil.copytree(tiny_ckpt.parent, models)
    output.mkdir()
    paths = sorted(images.glob("*.png"))
    validation = [{"image": str(path), "label": i % classes} for i, path in enumerate(paths)]
    datalist = {
        "labels": ["glioma", "meningioma", "pituitary"],
        "multi_label": False,
        "training": validation,
        "validation": validation,
        "test": [],
    }
    (output / "datalist.json").write_text(json.dumps(datalist))
    check = _cit(
        "export",
        "--bundle",
        str(BUNDLE),
        "--format",
        "bf16-check",
        "--ckpt-dir",
        str(models),
        "--output-dir",
        str(output),
        *guard,
    )
    return models / tiny_ckpt.name, check


def test_bf16_runs_only_after_its_check_and_rows_name_it(bundle_dir, tiny_ckpt, images, tmp_path):
    if not backends.cpu_has_native_bf16():
        pytest.skip("this CPU has no native bf16 (oneDNN); the refusal is tested above")
    unchecked = _infer(bundle_dir, tiny_ckpt, images, tmp_path / "unchecked", "--precision", "bf16")
    assert unchecked.returncode == 1 and "cit export --format bf16-check" in unchecked.stderr, (
        unchecked.stderr
    )
    # the guard is loosened: a random tiny model's arg-max flips easily; the check itself is what is tested
    ckpt, check = _checked_model(tiny_ckpt, images, tmp_path, "--max-auroc-drop", "1", "--min-agreement", "0")
    assert check.returncode == 0 and check.stdout.startswith("bf16: usable"), check.stderr[-3000:]
    record = json.loads((ckpt.parent / "model.bf16.json").read_text())
    assert record["usable"] and record["validation"]["num_images"] == 6 and "bf16" in record["validation"]
    for precision in ("bf16", "fp32"):
        result = _infer(bundle_dir, ckpt, images, tmp_path / precision, "--precision", precision)
        assert result.returncode == 0, result.stderr[-3000:]
        options = json.loads((tmp_path / precision / "run.json").read_text())["options"]
        assert options["backend"] == "pytorch" and options["precision"] == precision
    bf16, fp32 = _rows(tmp_path / "bf16"), _rows(tmp_path / "fp32")
    assert {(r["backend"], r["precision"]) for r in bf16.values()} == {("pytorch", "bf16")} and len(bf16) == 6
    for path, row in bf16.items():  # bf16 keeps 8 bits of mantissa: close to fp32, not equal
        probs = [float(row[k]) for k in row if k.startswith("prob_")]
        reference = [float(fp32[path][k]) for k in row if k.startswith("prob_")]
        np.testing.assert_allclose(probs, reference, atol=0.05, err_msg=path)
    # other weights under the same name: the check is stale
    torch.save({k: v + 0.01 for k, v in torch.load(ckpt).items()}, ckpt)
    stale = _infer(bundle_dir, ckpt, images, tmp_path / "stale", "--precision", "bf16")
    assert stale.returncode == 1 and "checked other weights" in stale.stderr, stale.stderr


def test_a_bf16_check_the_guard_fails_is_refused_in_one_line(bundle_dir, tiny_ckpt, images, tmp_path):
    if not backends.cpu_has_native_bf16():
        pytest.skip("this CPU has no native bf16 (oneDNN)")
    # one class only in validation: no AUROC is defined, so the guard cannot pass bf16
    ckpt, check = _checked_model(tiny_ckpt, images, tmp_path, classes=1)
    lines = [line for line in check.stderr.splitlines() if line.startswith("cit export")]
    assert check.returncode == 1 and len(lines) == 1 and "refused: bf16 not usable" in lines[0], check.stderr
    assert "AUROC cannot be checked" in lines[0]
    refused = _infer(bundle_dir, ckpt, images, tmp_path / "out", "--precision", "bf16")
    assert refused.returncode == 1 and "did not pass its accuracy check" in refused.stderr, refused.stderr
