"""What runs the network in `cit infer`: PyTorch, or ONNX Runtime on an ONNX export of the same weights.

On a CPU-only machine ONNX Runtime runs these networks faster than eager PyTorch (measured on this
project's 2-core machine, ../shared/perf-notes.md: ResNet-18 at 224 px 40 vs 26 img/s with
channels_last, EfficientNet-B0 64 vs 26), with outputs equal within the export's stated tolerance.
``auto`` picks it on the CPU when ``model.onnx`` sits beside the weights and its record
(``model.onnx.json``, written by `cit export --format onnx`) names these very weights; a stale
export is never used silently.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from toolkit.bundle.export import FORMATS, export_record_path
from toolkit.io import sha256_file

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "pytorch", "onnxruntime")


class OnnxRuntimeNetwork:
    """An ONNX export run by ONNX Runtime on the CPU, called like the torch network: images -> logits."""

    def __init__(self, path: str | Path, threads: int = 0):
        import onnxruntime  # only when this backend is used: it is an optional dependency (extra "export")

        options = onnxruntime.SessionOptions()
        if threads > 0:
            options.intra_op_num_threads = threads
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        array = images.detach().float().cpu().contiguous().numpy()
        return torch.from_numpy(self.session.run(None, {self.input_name: array})[0])


def current_onnx_export(ckpt_path: str | Path) -> tuple[Path | None, str]:
    """(``model.onnx`` beside ``ckpt_path`` when it was exported from these weights, else None; why not)."""
    onnx = Path(ckpt_path).with_name(FORMATS["onnx"])
    record_path = export_record_path(onnx)
    if not onnx.is_file():
        return None, f"no ONNX export at {onnx} (make one with `cit export --format onnx`)"
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError):
        return (
            None,
            f"{onnx} has no readable export record {record_path.name}: export it again with `cit export`",
        )
    if record.get("source_weights_sha256") != sha256_file(ckpt_path):
        return None, f"{onnx} was exported from other weights than {Path(ckpt_path).name}: export it again"
    return onnx, ""


def resolve_backend(requested: str, ckpt_path: str | Path, device: torch.device) -> str:
    """``pytorch`` or ``onnxruntime`` for a run on ``device`` (see the module docstring for ``auto``)."""
    if requested not in BACKENDS:
        raise ValueError(f"unknown backend {requested!r}; choose one of {BACKENDS}")
    if requested == "pytorch":
        return "pytorch"
    onnx, why_not = current_onnx_export(ckpt_path)
    if requested == "onnxruntime":
        if device.type != "cpu":
            raise ValueError(f"the onnxruntime backend runs on the CPU, not on {device}: pass --device cpu")
        if onnx is None:
            raise FileNotFoundError(why_not)
        return "onnxruntime"
    if device.type == "cpu" and onnx is not None and _onnxruntime_installed():
        logger.info("backend: ONNX Runtime on %s (CPU, export of these weights found)", onnx.name)
        return "onnxruntime"
    return "pytorch"


def _onnxruntime_installed() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True
