"""An int8 ONNX model for CPU-only sites, made with ONNX Runtime's own quantizer and measured before use.

:func:`quantize_onnx` turns the fp32 ONNX export of a trained model (``cit export --format onnx``)
into ``model.int8.onnx``: ``quant_pre_process`` (shape inference and graph optimisation), then static
quantization (``quantize_static``: QDQ, per-channel int8 weights, uint8 activations) calibrated on
un-augmented images of the model's recorded **training** split, preprocessed exactly as the model
was validated. It then scores the fp32 and the int8 model on the recorded **validation** split and
writes the comparison into ``model.int8.onnx.json``: top-1 agreement (multi-label: agreement of each
finding's decision at the stored thresholds), accuracy and AUROC of each, the paired bootstrap of the
difference (``toolkit.evaluation.compare.paired_bootstrap``, patients resampled where ids exist) and
the largest per-class probability difference. The record marks the model ``usable`` only when no
class (multi-label: finding) loses more than ``max_auroc_drop`` of AUROC and agreement is at least
``min_agreement``; inference never runs an int8 model whose record says otherwise.
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
from toolkit.bundle.description import ModelInfo, load_model_info
from toolkit.bundle.export import export_record_path
from toolkit.evaluation.calibration import TEMPERATURE_FILE, apply_temperature, load_temperature
from toolkit.evaluation.compare import ComparisonSet, paired_bootstrap
from toolkit.evaluation.thresholds import THRESHOLDS_FILE, load_thresholds, threshold_vector
from toolkit.io import atomic_write_json, sha256_file

logger = logging.getLogger(__name__)

INT8_NAME = "model.int8.onnx"
# ONNX Runtime's calibration methods by the name the command line takes
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
CALIBRATION_IMAGES = 200  # MinMax ranges settle within a few hundred images; more only costs time
MAX_AUROC_DROP = 0.005
MIN_AGREEMENT = 0.99
BOOTSTRAP_RESAMPLES = 1000
BATCH = 32
SEED = 0


class QuantizationRefused(RuntimeError):
    """The int8 model failed the accuracy guard; the message holds the figures in one line."""


@dataclass
class QuantizeResult:
    path: Path
    record: dict


def checked_with(ckpt_dir: str | os.PathLike) -> dict:
    """What beside the weights shapes the probabilities the guard compares: the temperature and a multi-label
    model's thresholds. A record made with others is stale (inference then does not use the int8 model)."""
    ckpt_dir = Path(ckpt_dir)
    thresholds = ckpt_dir / THRESHOLDS_FILE
    return {
        "temperature": load_temperature(ckpt_dir / TEMPERATURE_FILE),
        "thresholds": load_thresholds(thresholds) if thresholds.is_file() else None,
    }


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
    for inspection, marked unusable) and raises :class:`QuantizationRefused` when the guard fails.
    """
    import onnx
    import onnxruntime
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if method not in CALIBRATION_METHODS:
        raise ValueError(f"unknown calibration method {method!r}; choose one of {CALIBRATION_METHODS}")
    if calibration_images < 1:
        raise ValueError(f"the number of calibration images must be at least 1, got {calibration_images}")
    if not (max_auroc_drop >= 0 and 0 <= min_agreement <= 1):
        raise ValueError(
            f"the guard needs max_auroc_drop >= 0 and min_agreement in [0, 1], got {max_auroc_drop} and "
            f"{min_agreement}"
        )
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
    calib, calib_items = _preprocessed(info, chosen, "calibration")
    if not len(calib):
        raise ValueError("none of the chosen training images could be read for calibration")

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
            calibrate_method=getattr(CalibrationMethod, {"minmax": "MinMax"}.get(method, method.title())),
        )
        os.replace(Path(tmp) / INT8_NAME, out)
    opset = next((o.version for o in onnx.load(str(out)).opset_import if o.domain in ("", "ai.onnx")), None)

    context = checked_with(ckpt_dir)
    guard = _guard(info, context, validation, onnx_path, out, max_auroc_drop, min_agreement, n_resamples)
    record = {
        "format": "onnx-int8",
        "source_weights_sha256": sha256_file(ckpt_dir / "model.pt"),
        "source_onnx_sha256": sha256_file(onnx_path),
        "sha256": sha256_file(out),
        "onnx_opset": opset,
        "quantization": {
            "tool": f"onnxruntime.quantization {onnxruntime.__version__} (quant_pre_process + quantize_static)",
            "format": "QDQ",
            "per_channel": True,
            "weights": "int8",
            "activations": "uint8",
            "calibration_method": method,
        },
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
        raise QuantizationRefused(f"{out.name} not usable: {guard['refusal']}")
    logger.info("int8 model written to %s: %s", out, guard["summary"])
    return QuantizeResult(out, record)


class _Batches:
    """ONNX Runtime's calibration reader protocol (``get_next`` -> feed dict, None at the end) over an array.

    One image per batch: the histogram calibrators (entropy, percentile) stack every batch's outputs into
    one array, which fails when the last batch is smaller than the others."""

    def __init__(self, images: np.ndarray):
        self.batches = iter([{"image": images[i : i + 1]} for i in range(len(images))])

    def get_next(self):
        return next(self.batches, None)


def _preprocessed(info: ModelInfo, items: list[dict], purpose: str) -> tuple[np.ndarray, list[dict]]:
    """The images of ``items`` through the model's evaluation preprocessing (no augmentation), and the items
    read; a file that cannot be read is logged by name and left out."""
    transform = info.preprocessing_transforms(label_key=None)
    images, kept = [], []
    for item in items:
        try:
            images.append(np.asarray(transform({"image": item["image"]})["image"], dtype=np.float32))
            kept.append(item)
        except Exception as exc:  # noqa: BLE001 - one unreadable file is reported and skipped, never fatal
            logger.warning(
                "%s image %s skipped: %s", purpose, item.get("image"), " ".join(str(exc).split())[:300]
            )
    return (np.stack(images) if images else np.zeros((0,))), kept


def _fingerprint(items: list[dict]) -> str:
    return hashlib.sha256(json.dumps([sha256_file(item["image"]) for item in items]).encode()).hexdigest()


def _logits_of_both(models: tuple[Path, Path], info: ModelInfo, items: list[dict]):
    """Both models' logits on ``items``, read batch by batch (a large validation split never sits in
    memory at once), and the items read."""
    import onnxruntime

    sessions = [onnxruntime.InferenceSession(str(m), providers=["CPUExecutionProvider"]) for m in models]
    logits, kept = ([], []), []
    for start in range(0, len(items), BATCH):
        images, read = _preprocessed(info, items[start : start + BATCH], "validation")
        if read:
            kept += read
            for out, session in zip(logits, sessions, strict=True):
                out.append(session.run(None, {session.get_inputs()[0].name: images})[0])
    return [np.concatenate(out) if out else None for out in logits], kept


def _guard(
    info, context, validation, fp32_path, int8_path_, max_auroc_drop, min_agreement, n_resamples
) -> dict:
    """fp32 against int8 on the validation split: the comparison the record keeps, and the verdict."""
    from toolkit.evaluation.bootstrap import fast_classification_metrics, fast_multilabel_metrics

    (logits32, logits8), kept = _logits_of_both((fp32_path, int8_path_), info, validation)
    if not kept:
        raise ValueError("none of the validation images could be read: the int8 model cannot be checked")
    multi = bool(info.multi_label)
    p32, p8 = (apply_temperature(z, context["temperature"], multi) for z in (logits32, logits8))
    y_true = np.asarray([item["label"] for item in kept], dtype=int)
    groups = [str(item["patient_id"]) for item in kept] if all("patient_id" in i for i in kept) else None
    classes = list(info.class_names)
    if multi:
        threshold = threshold_vector(context["thresholds"], classes)
        agree_per_class = ((p32 >= threshold) == (p8 >= threshold)).mean(axis=0)
        agreement = float(agree_per_class.min())
        scores = [fast_multilabel_metrics(y_true, p, classes, threshold) for p in (p32, p8)]
    else:
        threshold = 0.5
        agreement = float((p32.argmax(axis=1) == p8.argmax(axis=1)).mean())
        scores = [fast_classification_metrics(y_true, p, classes) for p in (p32, p8)]
    macro = ("roc_auc_macro",) if multi else ("roc_auc_ovr_macro",)
    per_class = []
    for k, name in enumerate(classes):
        auc32, auc8 = (s[("per_class", name, "roc_auc")] for s in scores)
        entry = {"class": name, "auroc_fp32": auc32, "auroc_int8": auc8,
                 "max_abs_probability_difference": float(np.abs(p32[:, k] - p8[:, k]).max())}  # fmt: skip
        if multi:
            entry.update(threshold=float(threshold[k]), decision_agreement=float(agree_per_class[k]))
        per_class.append(entry)
    test = ComparisonSet([str(i) for i in range(len(kept))], groups, y_true, classes, multi)
    paired = paired_bootstrap(test, p32, p8, threshold, n_resamples=n_resamples, seed=SEED)

    # the verdict: every class / finding whose AUROC the validation split defines, and the agreement
    reasons = []
    defined = [c for c in per_class if c["auroc_fp32"] is not None and c["auroc_int8"] is not None]
    worst = max(defined, key=lambda c: c["auroc_fp32"] - c["auroc_int8"], default=None)
    worst_drop = worst["auroc_fp32"] - worst["auroc_int8"] if worst else None
    if worst is None:
        reasons.append("no class has both outcomes in the validation split, so AUROC cannot be checked")
    elif worst_drop > max_auroc_drop:
        reasons.append(f"AUROC of {worst['class']} drops by {worst_drop:.4f} (> {max_auroc_drop:g})")
    if agreement < min_agreement:
        what = "lowest per-finding decision agreement" if multi else "top-1 agreement"
        reasons.append(f"{what} {agreement:.2%} (< {min_agreement:.0%})")
    auroc_fp32, auroc_int8 = scores[0][macro], scores[1][macro]
    summary = (
        f"{len(kept)} validation images, agreement {agreement:.2%}, accuracy {scores[0][('accuracy',)]:.4f} -> "
        f"{scores[1][('accuracy',)]:.4f}, macro AUROC {_fmt(auroc_fp32)} -> {_fmt(auroc_int8)}, largest AUROC "
        f"drop {_fmt(worst_drop)}, largest probability difference "
        f"{max(c['max_abs_probability_difference'] for c in per_class):.4f}"
    )
    return {
        "split": "validation",
        "num_images": len(kept),
        "skipped": len(validation) - len(kept),
        "task": "multi-label" if multi else "single-label",
        "agreement": agreement,
        "agreement_kind": "lowest per-finding decision agreement at the stored thresholds"
        if multi
        else "top-1",
        "fp32": {"accuracy": scores[0][("accuracy",)], "auroc": auroc_fp32},
        "int8": {"accuracy": scores[1][("accuracy",)], "auroc": auroc_int8},
        "largest_auroc_drop": worst_drop,
        "max_abs_probability_difference": max(c["max_abs_probability_difference"] for c in per_class),
        "per_class": per_class,
        # int8 - fp32 on the same resampled patients (images where the split has no patient ids)
        "paired_difference": {"resamples": n_resamples, "unit": test.unit, "confidence": 0.95, **paired},
        "criteria": {"max_auroc_drop": max_auroc_drop, "min_agreement": min_agreement},
        "usable": not reasons,
        "refusal": "; ".join(reasons) + f" ({summary})" if reasons else None,
        "summary": summary,
    }


def _fmt(value) -> str:
    return "undefined" if value is None else f"{value:.4f}"
