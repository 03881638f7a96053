"""bf16 for CPU-only sites, measured before use: the trained PyTorch model under CPU bf16 autocast against fp32.

:func:`check_bf16` runs the model as `cit infer` does (channels_last, eval) in fp32 and under
``torch.autocast("cpu", dtype=torch.bfloat16)`` on its recorded **validation** split, compares them with
the int8 export's guard (``toolkit.bundle.precision_guard``) and writes ``model.bf16.json`` beside the
weights. `cit infer --precision bf16` runs only while that record names these weights, the same
temperature / thresholds, and marks bf16 usable: on Kermany, bf16 autocast cost EfficientNet-Lite0
0.5-1.0 points of test accuracy, more than int8 (docs/performance.md), so it is not assumed harmless.

bf16 needs a CPU whose oneDNN runs it natively (AVX512-BF16 / AMX); elsewhere it is emulated and several
times slower than fp32, and the check refuses to start.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from toolkit.bundle.datalists import saved_datalist
from toolkit.bundle.description import load_model_info
from toolkit.bundle.loading import load_weights
from toolkit.bundle.precision_guard import (
    BOOTSTRAP_RESAMPLES,
    MAX_AUROC_DROP,
    MIN_AGREEMENT,
    GuardRefused,
    check_guard_options,
    checked_with,
    compare_on_validation,
)
from toolkit.engines import prepare_network
from toolkit.io import atomic_write_json, sha256_file

BF16_RECORD = "model.bf16.json"


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN, as torch ships it, runs bf16 natively on this CPU (asked of torch, not the CPU's name)."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())  # what torch's own bf16 tests ask
    except (AttributeError, RuntimeError):  # a torch build without the query
        return False


def bf16_record_path(ckpt_path: str | os.PathLike) -> Path:
    """``model.bf16.json`` beside the weights ``ckpt_path``."""
    return Path(ckpt_path).with_name(BF16_RECORD)


def check_bf16(
    ckpt_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    max_auroc_drop: float = MAX_AUROC_DROP,
    min_agreement: float = MIN_AGREEMENT,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
) -> dict:
    """Compare bf16 autocast with fp32 for the model in ``ckpt_dir`` on the validation split recorded in
    ``output_dir``; writes the record in every case and raises :class:`GuardRefused` when bf16 fails."""
    check_guard_options(max_auroc_drop, min_agreement)
    if not cpu_has_native_bf16():
        raise ValueError(
            "this CPU has no native bf16 (oneDNN reports no AVX512-BF16 / AMX): nothing to check"
        )
    ckpt_dir = Path(ckpt_dir)
    info = load_model_info(ckpt_dir)
    validation = saved_datalist(output_dir, model_info=info).get("validation") or []
    if not validation:
        raise FileNotFoundError(
            f"{Path(output_dir) / 'datalist.json'} has no validation images to check bf16 on"
        )
    network = info.create_network().eval()
    load_weights(network, ckpt_dir / "model.pt")
    network = prepare_network(network, "cpu")

    def runner(bf16: bool):
        def run(images: np.ndarray) -> np.ndarray:
            x = torch.from_numpy(images).contiguous(memory_format=torch.channels_last)
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                return network(x).float().numpy()

        return run

    context = checked_with(ckpt_dir)
    guard = compare_on_validation(
        info,
        context,
        validation,
        (runner(False), runner(True)),
        "bf16",
        max_auroc_drop,
        min_agreement,
        n_resamples,
    )
    record = {
        "format": "pytorch-bf16-autocast",
        "source_weights_sha256": sha256_file(ckpt_dir / "model.pt"),
        "torch": torch.__version__,
        "validation": guard,
        "checked_with": context,
        "usable": guard["usable"],
    }
    atomic_write_json(ckpt_dir / BF16_RECORD, record)
    if not guard["usable"]:
        raise GuardRefused(f"bf16 not usable for {ckpt_dir / 'model.pt'}: {guard['refusal']}")
    return record
