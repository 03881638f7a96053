"""The accuracy guard of a faster, less exact way to run a trained model (int8 ONNX, bf16 autocast).

:func:`compare_on_validation` scores the fp32 model and the candidate on the model's recorded
**validation** split, preprocessed exactly as the model was validated: top-1 agreement (multi-label:
agreement of each finding's decision at the stored thresholds), accuracy and AUROC of each, the paired
bootstrap of the difference (``toolkit.evaluation.compare.paired_bootstrap``, patients resampled where ids
exist) and the largest per-class probability difference. The candidate is ``usable`` only when no class
(multi-label: finding) loses more than ``max_auroc_drop`` of AUROC and agreement is at least
``min_agreement``; inference never runs a candidate whose record says otherwise
(``toolkit.inference.backends``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from toolkit.bundle.description import ModelInfo
from toolkit.evaluation.bootstrap import fast_classification_metrics, fast_multilabel_metrics
from toolkit.evaluation.calibration import TEMPERATURE_FILE, apply_temperature, load_temperature
from toolkit.evaluation.compare import ComparisonSet, paired_bootstrap
from toolkit.evaluation.thresholds import THRESHOLDS_FILE, load_thresholds, threshold_vector

logger = logging.getLogger(__name__)

MAX_AUROC_DROP = 0.005
MIN_AGREEMENT = 0.99
BOOTSTRAP_RESAMPLES = 1000
BATCH = 32
SEED = 0

Runner = Callable[[np.ndarray], np.ndarray]  # a batch of preprocessed images -> logits


class GuardRefused(RuntimeError):
    """The candidate failed the accuracy guard; the message holds the figures in one line."""


def check_guard_options(max_auroc_drop: float, min_agreement: float) -> None:
    if not (max_auroc_drop >= 0 and 0 <= min_agreement <= 1):
        raise ValueError(
            f"the guard needs max_auroc_drop >= 0 and min_agreement in [0, 1], got {max_auroc_drop} and "
            f"{min_agreement}"
        )


def preprocessed(info: ModelInfo, items: list[dict], purpose: str) -> tuple[np.ndarray, list[dict]]:
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


def checked_with(ckpt_dir: str | os.PathLike) -> dict:
    """What beside the weights shapes the probabilities the guard compares: the temperature and a multi-label
    model's thresholds. A record made with others is stale (inference then does not use the candidate)."""
    ckpt_dir = Path(ckpt_dir)
    thresholds = ckpt_dir / THRESHOLDS_FILE
    return {
        "temperature": load_temperature(ckpt_dir / TEMPERATURE_FILE),
        "thresholds": load_thresholds(thresholds) if thresholds.is_file() else None,
    }


def logits_of(runners: Sequence[Runner], info: ModelInfo, items: list[dict]):
    """Each runner's logits on ``items``, read batch by batch (a large validation split never sits in memory
    at once), and the items read."""
    logits, kept = tuple([] for _ in runners), []
    for start in range(0, len(items), BATCH):
        images, read = preprocessed(info, items[start : start + BATCH], "validation")
        if read:
            kept += read
            for out, run in zip(logits, runners, strict=True):
                out.append(np.asarray(run(images), dtype=np.float32))
    return [np.concatenate(out) if out else None for out in logits], kept


def _fmt(value) -> str:
    return "undefined" if value is None else f"{value:.4f}"


def _verdict(
    per_class: list[dict], candidate: str, agreement: float, multi: bool, max_auroc_drop, min_agreement
):
    """Why the candidate is not usable (empty: it is), from every class / finding whose AUROC the validation
    split defines and the agreement; and the largest AUROC drop (None when no AUROC is defined)."""
    key = f"auroc_{candidate}"
    reasons = []
    defined = [c for c in per_class if c["auroc_fp32"] is not None and c[key] is not None]
    worst = max(defined, key=lambda c: c["auroc_fp32"] - c[key], default=None)
    worst_drop = worst["auroc_fp32"] - worst[key] if worst else None
    if worst is None:
        reasons.append("no class has both outcomes in the validation split, so AUROC cannot be checked")
    elif worst_drop > max_auroc_drop:
        reasons.append(f"AUROC of {worst['class']} drops by {worst_drop:.4f} (> {max_auroc_drop:g})")
    if agreement < min_agreement:
        what = "lowest per-finding decision agreement" if multi else "top-1 agreement"
        reasons.append(f"{what} {agreement:.2%} (< {min_agreement:.0%})")
    return reasons, worst_drop


def compare_on_validation(
    info: ModelInfo,
    context: dict,
    validation: list[dict],
    runners: tuple[Runner, Runner],
    candidate: str,
    max_auroc_drop: float = MAX_AUROC_DROP,
    min_agreement: float = MIN_AGREEMENT,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
) -> dict:
    """fp32 (``runners[0]``) against ``candidate`` (``runners[1]``, e.g. "int8") on the validation items:
    the comparison a record keeps, and the verdict (module docstring). ``context``: :func:`checked_with`."""
    (logits32, logits_c), kept = logits_of(runners, info, validation)
    if not kept:
        raise ValueError(
            f"none of the validation images could be read: the {candidate} model cannot be checked"
        )
    multi = bool(info.multi_label)
    p32, p_c = (apply_temperature(z, context["temperature"], multi) for z in (logits32, logits_c))
    y_true = np.asarray([item["label"] for item in kept], dtype=int)
    groups = [str(item["patient_id"]) for item in kept] if all("patient_id" in i for i in kept) else None
    classes = list(info.class_names)
    if multi:
        threshold = threshold_vector(context["thresholds"], classes)
        agree_per_class = ((p32 >= threshold) == (p_c >= threshold)).mean(axis=0)
        agreement = float(agree_per_class.min())
        scores = [fast_multilabel_metrics(y_true, p, classes, threshold) for p in (p32, p_c)]
    else:
        threshold = 0.5
        agreement = float((p32.argmax(axis=1) == p_c.argmax(axis=1)).mean())
        scores = [fast_classification_metrics(y_true, p, classes) for p in (p32, p_c)]
    macro = ("roc_auc_macro",) if multi else ("roc_auc_ovr_macro",)
    per_class = []
    for k, name in enumerate(classes):
        auc32, auc8 = (s[("per_class", name, "roc_auc")] for s in scores)
        entry = {
            "class": name,
            "auroc_fp32": auc32,
            f"auroc_{candidate}": auc8,
            "max_abs_probability_difference": float(np.abs(p32[:, k] - p_c[:, k]).max()),
        }
        if multi:
            entry.update(threshold=float(threshold[k]), decision_agreement=float(agree_per_class[k]))
        per_class.append(entry)
    test = ComparisonSet([str(i) for i in range(len(kept))], groups, y_true, classes, multi)
    paired = paired_bootstrap(test, p32, p_c, threshold, n_resamples=n_resamples, seed=SEED)

    reasons, worst_drop = _verdict(per_class, candidate, agreement, multi, max_auroc_drop, min_agreement)
    auroc_fp32, auroc_c = scores[0][macro], scores[1][macro]
    summary = (
        f"{len(kept)} validation images, agreement {agreement:.2%}, accuracy {scores[0][('accuracy',)]:.4f} -> "
        f"{scores[1][('accuracy',)]:.4f}, macro AUROC {_fmt(auroc_fp32)} -> {_fmt(auroc_c)}, largest AUROC "
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
        candidate: {"accuracy": scores[1][("accuracy",)], "auroc": auroc_c},
        "largest_auroc_drop": worst_drop,
        "max_abs_probability_difference": max(c["max_abs_probability_difference"] for c in per_class),
        "per_class": per_class,
        # candidate - fp32 on the same resampled patients (images where the split has no patient ids)
        "paired_difference": {"resamples": n_resamples, "unit": test.unit, "confidence": 0.95, **paired},
        "criteria": {"max_auroc_drop": max_auroc_drop, "min_agreement": min_agreement},
        "usable": not reasons,
        "refusal": "; ".join(reasons) + f" ({summary})" if reasons else None,
        "summary": summary,
    }
