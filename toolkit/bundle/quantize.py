"""An int8 ONNX model for CPU-only sites, made with ONNX Runtime's own quantizer and measured before use.

:func:`quantize_onnx` turns the fp32 ONNX export of a trained model (``cit export --format onnx``)
into ``model.int8.onnx``: ``quant_pre_process`` (shape inference and graph optimisation), then static
quantization (``quantize_static``: QDQ, per-channel int8 weights, uint8 activations; weights in 7 bits
on a CPU without int8 dot-product instructions, see :func:`cpu_has_vnni`) calibrated on
un-augmented images of the model's recorded **training** split, preprocessed exactly as the model
was validated. It then compares the fp32 and the int8 model on the recorded **validation** split
(``toolkit.bundle.precision_guard``) and writes the comparison into ``model.int8.onnx.json``; inference
never runs an int8 model whose record does not mark it ``usable``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from toolkit.bundle.datalists import saved_datalist
from toolkit.bundle.description import load_model_info
from toolkit.bundle.export import export_record_path
from toolkit.bundle.precision_guard import (
    BOOTSTRAP_RESAMPLES,
    MAX_AUROC_DROP,
    MIN_AGREEMENT,
    SEED,
    GuardRefused,
    check_guard_options,
    checked_with,
    compare_on_validation,
    preprocessed,
)
from toolkit.io import atomic_write_json, sha256_file

logger = logging.getLogger(__name__)

INT8_NAME = "model.int8.onnx"
# ONNX Runtime's calibration methods by the name the command line takes
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
CALIBRATION_IMAGES = 200  # MinMax ranges settle within a few hundred images; more only costs time


@dataclass
class QuantizeResult:
    path: Path
    record: dict


def cpu_has_vnni() -> bool:
    """Whether this CPU has int8 dot-product instructions (AVX512-VNNI / AVX-VNNI, or AMX), as torch
    reports them. Without them ONNX Runtime multiplies uint8 activations by int8 weights with an
    instruction whose 16-bit sums saturate, and a model quantized with full 8-bit weights can change its
    answers (ONNX Runtime's quantization guide: use ``reduce_range``, 7-bit weights, there). Seen here: the
    tiny model of tests/inference/test_int8_export.py flipped 1 of its 12 validation answers with 8-bit
    weights on an AVX2-only CPU."""
    import torch

    return bool(torch.cpu._is_vnni_supported() or torch.cpu._is_amx_tile_supported())


def int8_path(onnx_path: str | os.PathLike) -> Path:
    """``model.int8.onnx`` beside the fp32 export ``onnx_path``."""
    return Path(onnx_path).with_name(INT8_NAME)


def quantize_onnx(
    onnx_path: str | os.PathLike,
    ckpt_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    calibration_images: int = CALIBRATION_IMAGES,
    method: str = "minmax",
    max_auroc_drop: float = MAX_AUROC_DROP,
    min_agreement: float = MIN_AGREEMENT,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
) -> QuantizeResult:
    """Quantize the fp32 export ``onnx_path`` of the model in ``ckpt_dir`` and measure it (module docstring).

    ``output_dir``: the training run's output folder, whose ``datalist.json`` holds the recorded split.
    Writes ``model.int8.onnx`` and its record beside ``onnx_path`` in every case (a refused model stays
    for inspection, marked unusable) and raises :class:`~toolkit.bundle.precision_guard.GuardRefused` when
    the guard fails.
    """
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"unknown calibration method {method!r}; choose one of {CALIBRATION_METHODS}")
    if calibration_images < 1:
        raise ValueError(f"the number of calibration images must be at least 1, got {calibration_images}")
    check_guard_options(max_auroc_drop, min_agreement)
    onnx_path, ckpt_dir = Path(onnx_path), Path(ckpt_dir)
    info = load_model_info(ckpt_dir)
    split = saved_datalist(output_dir, model_info=info)  # refuses a split the model was not trained on
    training, validation = split.get("training") or [], split.get("validation") or []
    if not training or not validation:
        raise FileNotFoundError(
            f"{Path(output_dir) / 'datalist.json'} has no training or no validation images: the int8 model "
            "is calibrated on the first and checked on the second"
        )
    chosen = [
        training[i] for i in np.random.default_rng(SEED).permutation(len(training))[:calibration_images]
    ]
    calib, calib_items = preprocessed(info, chosen, "calibration")
    if not len(calib):
        raise ValueError("none of the chosen training images could be read for calibration")

    reduce_range = not cpu_has_vnni()
    out = _quantized(onnx_path, calib, method, reduce_range)
    context = checked_with(ckpt_dir)
    runners = tuple(_onnx_runner(path) for path in (onnx_path, out))
    guard = compare_on_validation(
        info, context, validation, runners, "int8", max_auroc_drop, min_agreement, n_resamples
    )
    record = {
        "format": "onnx-int8",
        "source_weights_sha256": sha256_file(ckpt_dir / "model.pt"),
        "source_onnx_sha256": sha256_file(onnx_path),
        "sha256": sha256_file(out),
        **_quantization_record(out, method, reduce_range),
        "calibration": {
            "split": "training",
            "split_fingerprint": split.get("split_fingerprint"),
            "num_images": len(calib_items),
            "skipped": len(chosen) - len(calib_items),
            "seed": SEED,
            # which files calibrated the model, without naming them (paths may identify patients)
            "images_sha256": _fingerprint(calib_items),
        },
        "validation": guard,
        "checked_with": context,
        "usable": guard["usable"],
    }
    atomic_write_json(export_record_path(out), record)
    if not guard["usable"]:
        raise GuardRefused(f"{out.name} not usable: {guard['refusal']}")
    logger.info("int8 model written to %s: %s", out, guard["summary"])
    return QuantizeResult(out, record)


def _quantized(onnx_path: Path, calib: np.ndarray, method: str, reduce_range: bool) -> Path:
    """``model.int8.onnx`` beside ``onnx_path``: ONNX Runtime's pre-processing, then static quantization
    calibrated on the images ``calib`` (written whole: temp file + rename); ``reduce_range``: 7-bit weights."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out = int8_path(onnx_path)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(onnx_path), str(prepared))
        quantize_static(
            str(prepared),
            str(Path(tmp) / INT8_NAME),
            _Batches(calib),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            reduce_range=reduce_range,
            calibrate_method=getattr(CalibrationMethod, {"minmax": "MinMax"}.get(method, method.title())),
        )
        os.replace(Path(tmp) / INT8_NAME, out)
    return out


def _quantization_record(out: Path, method: str, reduce_range: bool) -> dict:
    import onnx
    import onnxruntime

    opset = next((o.version for o in onnx.load(str(out)).opset_import if o.domain in ("", "ai.onnx")), None)
    return {
        "onnx_opset": opset,
        "quantization": {
            "tool": f"onnxruntime.quantization {onnxruntime.__version__} (quant_pre_process + quantize_static)",
            "format": "QDQ",
            "per_channel": True,
            "weights": "int8",
            # True: weights in 7 bits; full 8-bit weights are safe only on a CPU with int8 dot products
            # (cpu_has_vnni), which inference checks
            "reduce_range": reduce_range,
            "activations": "uint8",
            "calibration_method": method,
        },
    }


class _Batches:
    """ONNX Runtime's calibration reader protocol (``get_next`` -> feed dict, None at the end) over an array.

    One image per batch: the histogram calibrators (entropy, percentile) stack every batch's outputs into
    one array, which fails when the last batch is smaller than the others."""

    def __init__(self, images: np.ndarray):
        self.batches = iter([{"image": images[i : i + 1]} for i in range(len(images))])

    def get_next(self):
        return next(self.batches, None)


def _fingerprint(items: list[dict]) -> str:
    return hashlib.sha256(json.dumps([sha256_file(item["image"]) for item in items]).encode()).hexdigest()


def _onnx_runner(path: Path):
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda images: session.run(None, {session.get_inputs()[0].name: images})[0]
