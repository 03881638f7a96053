"""`cit export --format onnx --int8` and the int8 backend of `cit infer`: the quantized model is made with ONNX
Runtime's quantizer, its record holds the fp32 / int8 comparison on the validation split, `auto` runs it only
while it is current and passed that check, and a model the check fails is refused in one line.

The model is the bundle's own architecture with seeded random weights (``write_tiny_checkpoint``), on small
PNG images of varied brightness and texture, so that its outputs differ from image to image."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import torch
from infer_helpers import BUNDLE, write_tiny_checkpoint
from PIL import Image

from tests.bundles.test_model_info import _cit
from toolkit.bundle.precision_guard import GuardRefused
from toolkit.bundle.quantize import cpu_has_vnni, quantize_onnx
from toolkit.inference import backends
from toolkit.inference.backends import current_int8_export

pytest.importorskip("onnxruntime")


def _write_images(folder, n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    items = []
    for i in range(n):
        level, contrast = rng.uniform(20, 235), rng.uniform(5, 120)
        pixels = np.clip(level + contrast * rng.standard_normal((40, 40)), 0, 255).astype(np.uint8)
        path = folder / f"img{seed}_{i:02d}.png"
        Image.fromarray(pixels).save(path)
        items.append({"image": str(path), "label": i % 3, "patient_id": f"P{seed}{i // 2}"})
    return items


@pytest.fixture(scope="module")
def exported(module_tmp):
    """A tiny model with its recorded split (training / validation), exported as fp32 and int8 ONNX."""
    root = module_tmp("int8")
    models, output, images = root / "models", root / "output", root / "images"
    for folder in (models, output, images / "train", images / "val"):
        folder.mkdir(parents=True)
    write_tiny_checkpoint(BUNDLE, models)
    datalist = {
        "labels": ["glioma", "meningioma", "pituitary"],
        "multi_label": False,
        "training": _write_images(images / "train", 24, 1),
        "validation": _write_images(images / "val", 12, 2),
        "test": [],
    }
    datalist["test"] = datalist["validation"][:2]  # the fp32 export's own check images
    (output / "datalist.json").write_text(json.dumps(datalist))
    # 12 validation images: one swapped pair of a class moves its AUROC by 1/32, hence the wider bound
    result = _export(models, output, "--max-auroc-drop", "0.05")
    assert result.returncode == 0, result.stderr[-3000:]
    return root, result


def _export(models, output, *options):
    return _cit(
        "export",
        "--bundle",
        str(BUNDLE),
        "--ckpt-dir",
        str(models),
        "--output-dir",
        str(output),
        "--format",
        "onnx",
        "--int8",
        *options,
    )


def _infer(models, inputs, out, *options):
    result = _cit(
        "infer",
        "--bundle",
        str(BUNDLE),
        "--ckpt-path",
        str(models / "model.pt"),
        "--input",
        str(inputs),
        "--output",
        str(out),
        "--device",
        "cpu",
        "--workers",
        "0",
        "--no-progress",
        *options,
    )
    run = json.loads((out / "run.json").read_text()) if result.returncode == 0 else {}
    return result, run


def _rows(out) -> list[dict]:
    with open(out / "predictions.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_int8_export_records_the_validation_comparison(exported):
    root, result = exported
    int8 = root / "models" / "model.int8.onnx"
    record = json.loads((root / "models" / "model.int8.onnx.json").read_text())
    assert int8.is_file() and "int8: " in result.stdout
    assert record["usable"] is True and record["onnx_opset"] >= 13
    assert record["quantization"]["format"] == "QDQ" and record["quantization"]["per_channel"] is True
    assert record["calibration"]["split"] == "training" and record["calibration"]["num_images"] == 24
    assert len(record["calibration"]["images_sha256"]) == 64
    guard = record["validation"]
    assert guard["split"] == "validation" and guard["num_images"] == 12
    assert guard["agreement"] >= 0.99 and guard["largest_auroc_drop"] <= 0.05
    for model in ("fp32", "int8"):
        assert 0 <= guard[model]["accuracy"] <= 1 and 0 <= guard[model]["auroc"] <= 1
    auroc = guard["paired_difference"]["auroc"]
    assert (
        auroc["low"] <= auroc["difference"] <= auroc["high"]
        and guard["paired_difference"]["unit"] == "patient"
    )
    assert guard["max_abs_probability_difference"] == max(
        c["max_abs_probability_difference"] for c in guard["per_class"]
    )
    # a real int8 graph: ONNX Runtime's quantize / dequantize nodes around int8 weights
    import onnx

    ops = {node.op_type for node in onnx.load(str(int8)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops


def test_auto_runs_the_current_int8_export_and_rows_name_it(exported, tmp_path):
    root, _ = exported
    models, inputs = root / "models", root / "images" / "val"
    result, run = _infer(models, inputs, tmp_path / "auto")
    assert result.returncode == 0, result.stderr[-3000:]
    assert run["options"]["backend"] == "onnxruntime-int8" and run["options"]["precision"] == "int8"
    assert run["onnx_sha256"] == json.loads((models / "model.int8.onnx.json").read_text())["sha256"]
    int8_rows = _rows(tmp_path / "auto")
    assert {(r["backend"], r["precision"]) for r in int8_rows} == {("onnxruntime-int8", "int8")}
    _, fp32_run = _infer(models, inputs, tmp_path / "fp32", "--backend", "pytorch")
    fp32_rows = {r["path"]: r for r in _rows(tmp_path / "fp32")}
    assert fp32_run["options"]["precision"] == "fp32" and len(int8_rows) == 12
    for row in int8_rows:  # the guard's bound holds for the rows cit infer writes
        assert row["pred"] == fp32_rows[row["path"]]["pred"]


def test_a_stale_or_replaced_int8_export_is_never_used(exported, tmp_path):
    root, _ = exported
    models = tmp_path / "models"
    shutil.copytree(root / "models", models)
    inputs = root / "images" / "val"
    # the int8 file swapped after its check: auto takes the fp32 export, an explicit int8 run is refused
    original = (models / "model.int8.onnx").read_bytes()
    (models / "model.int8.onnx").write_bytes(original + b"\0")
    result, run = _infer(models, inputs, tmp_path / "swapped")
    assert result.returncode == 0 and run["options"]["backend"] == "onnxruntime"
    refused, _ = _infer(models, inputs, tmp_path / "swapped_int8", "--backend", "onnxruntime-int8")
    assert refused.returncode == 1 and "not the file its record checked" in refused.stderr
    # a temperature fitted after the check changes the probabilities it compared: the check is stale
    (models / "model.int8.onnx").write_bytes(original)
    (models / "temperature.json").write_text(json.dumps({"temperature": 2.0}))
    refused, _ = _infer(models, inputs, tmp_path / "tempered_int8", "--backend", "onnxruntime-int8")
    assert refused.returncode == 1 and "another temperature" in refused.stderr
    # new weights beside the old exports: PyTorch
    state = torch.load(models / "model.pt", weights_only=True)
    state["fc.bias"] += 1.0
    torch.save(state, models / "model.pt")
    result, run = _infer(models, inputs, tmp_path / "stale")
    assert result.returncode == 0 and run["options"]["backend"] == "pytorch"
    refused, _ = _infer(models, inputs, tmp_path / "stale_int8", "--backend", "onnxruntime-int8")
    assert refused.returncode == 1 and "exported from other weights" in refused.stderr


def test_int8_calibrated_on_one_black_image_is_refused_in_one_line(exported, tmp_path):
    root, _ = exported
    models, output = tmp_path / "models", tmp_path / "output"
    shutil.copytree(root / "models", models)
    output.mkdir()
    black = tmp_path / "black.png"
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(black)
    datalist = json.loads((root / "output" / "datalist.json").read_text())
    datalist["training"] = [{"image": str(black), "label": 0, "patient_id": "B"}]
    (output / "datalist.json").write_text(json.dumps(datalist))
    # the quantizer itself, on the fp32 export the fixture made (`cit export` prints this message as it is)
    with pytest.raises(GuardRefused) as refused:
        quantize_onnx(models / "model.onnx", models, output, max_auroc_drop=0.05, n_resamples=200)
    refusal = str(refused.value)
    print(refusal)
    assert "\n" not in refusal and refusal.startswith("model.int8.onnx not usable: ")
    assert "agreement" in refusal and "AUROC" in refusal and "12 validation images" in refusal
    record = json.loads((models / "model.int8.onnx.json").read_text())
    assert record["usable"] is False and record["calibration"]["num_images"] == 1
    result, run = _infer(models, root / "images" / "val", tmp_path / "auto")
    assert result.returncode == 0 and run["options"]["backend"] == "onnxruntime"
    refused, _ = _infer(models, root / "images" / "val", tmp_path / "int8", "--backend", "onnxruntime-int8")
    assert refused.returncode == 1 and "did not pass its accuracy check" in refused.stderr


@pytest.mark.parametrize("method", ["minmax", "percentile"])
def test_every_calibration_method_quantizes_past_one_batch(exported, tmp_path, method):
    """More calibration images than one batch of the fp32 check (a smaller last batch broke ONNX Runtime's
    histogram calibrators, which stack all batches' outputs)."""
    root, _ = exported
    models, output = tmp_path / "models", tmp_path / "output"
    shutil.copytree(root / "models", models)
    output.mkdir()
    datalist = json.loads((root / "output" / "datalist.json").read_text())
    datalist["training"] = datalist["training"] * 2  # 48 images
    (output / "datalist.json").write_text(json.dumps(datalist))
    result = quantize_onnx(
        models / "model.onnx",
        models,
        output,
        method=method,
        max_auroc_drop=1.0,
        min_agreement=0.0,
        n_resamples=50,
    )
    assert result.record["quantization"]["calibration_method"] == method
    assert result.record["calibration"]["num_images"] == 48 and result.record["usable"]


def test_an_export_without_its_weights_file_is_never_used(exported, tmp_path):
    """torch's exporter keeps the fp32 weights in model.onnx.data: without it the export is not chosen."""
    root, _ = exported
    models = tmp_path / "models"
    shutil.copytree(root / "models", models)
    (models / "model.onnx.data").unlink()  # the int8 model holds its weights itself
    refused, _ = _infer(models, root / "images" / "val", tmp_path / "fp32", "--backend", "onnxruntime")
    assert refused.returncode == 1 and "lacks its weights file model.onnx.data" in refused.stderr
    result, run = _infer(models, root / "images" / "val", tmp_path / "auto")
    assert result.returncode == 0 and run["options"]["backend"] == "onnxruntime-int8"


def test_full_8bit_weights_are_not_used_on_a_cpu_without_int8_dot_products(exported, tmp_path, monkeypatch):
    """Without VNNI / AMX, ONNX Runtime's uint8 x int8 products can saturate with 8-bit weights: the
    export made here chose the weight range for this CPU, and an export with 8-bit weights (checked on
    another CPU) is not used on one without them."""
    root, _ = exported
    models = tmp_path / "models"
    shutil.copytree(root / "models", models)
    record_path = models / "model.int8.onnx.json"
    record = json.loads(record_path.read_text())
    assert record["quantization"]["reduce_range"] is (not cpu_has_vnni())
    assert current_int8_export(models / "model.pt")[0] == models / "model.int8.onnx"
    record["quantization"]["reduce_range"] = False
    record_path.write_text(json.dumps(record))
    monkeypatch.setattr(backends, "cpu_has_vnni", lambda: False)
    path, why_not = current_int8_export(models / "model.pt")
    assert path is None and "this CPU lacks them" in why_not
    monkeypatch.setattr(backends, "cpu_has_vnni", lambda: True)
    assert current_int8_export(models / "model.pt")[0] == models / "model.int8.onnx"
