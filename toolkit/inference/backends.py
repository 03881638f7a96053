"""What runs the network in `cit infer`: PyTorch, or ONNX Runtime on an ONNX export of the same weights.

On a CPU-only machine ONNX Runtime runs these networks faster than eager PyTorch (measured on this
project's 2-core machine, ../shared/perf-notes.md: ResNet-18 at 224 px 40 vs 26 img/s with
channels_last, EfficientNet-B0 64 vs 26), with outputs equal within the export's stated tolerance.
``auto`` picks it on the CPU when ``model.onnx`` sits beside the weights and its record
(``model.onnx.json``, written by `cit export --format onnx`) names these very weights; a stale
export is never used silently.

``onnxruntime-int8`` runs ``model.int8.onnx`` (`cit export --format onnx --int8`: static int8
quantization, measured against fp32 on the validation split). ``auto`` prefers it on the CPU, but only
when its record (``model.int8.onnx.json``) names these very weights, hashes this very file and marks it
usable (it passed the accuracy check), and, when it has full 8-bit weights, only on a CPU with int8
dot-product instructions like the one that checked it (``toolkit.bundle.quantize.cpu_has_vnni``);
otherwise the fp32 export, otherwise PyTorch.

``--precision bf16`` runs the PyTorch backend under CPU bf16 autocast, only where oneDNN reports native
bf16 support (AVX512-BF16 / AMX): elsewhere bf16 is emulated and several times slower, so it is refused;
and only for weights whose bf16 check against fp32 on the validation split (`cit export --format
bf16-check`, ``toolkit.bundle.bf16_check``) is current and passed, as for the int8 export.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from toolkit.bundle.bf16_check import bf16_record_path, cpu_has_native_bf16
from toolkit.bundle.export import FORMATS, export_record_path, onnx_weight_files
from toolkit.bundle.precision_guard import checked_with
from toolkit.bundle.quantize import INT8_NAME, cpu_has_vnni
from toolkit.io import sha256_file

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "pytorch", "onnxruntime", "onnxruntime-int8")
PRECISIONS = ("fp32", "bf16")  # of the PyTorch backend; the ONNX backends run their file's precision


class OnnxRuntimeNetwork:
    """An ONNX export run by ONNX Runtime on the CPU, called like the torch network: images -> logits."""

    def __init__(self, path: str | Path, threads: int = 0):
        import onnxruntime  # only when this backend is used: it is an optional dependency (extra "export")

        options = onnxruntime.SessionOptions()
        if threads > 0:
            options.intra_op_num_threads = threads
        # No busy-waiting between runs: the loader workers decoding the next batch need those cores
        # (ONNX Runtime's threads spin after each run by default, which suits back-to-back runs only).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        array = images.detach().float().cpu().contiguous().numpy()
        return torch.from_numpy(self.session.run(None, {self.input_name: array})[0])


def current_onnx_export(ckpt_path: str | Path) -> tuple[Path | None, str]:
    """(``model.onnx`` beside ``ckpt_path`` when it was exported from these weights, else None; why not)."""
    onnx, record, why_not = _export_of(ckpt_path, FORMATS["onnx"])
    why_not = why_not or _missing_weights(onnx)
    return (None if why_not else onnx), why_not


def current_int8_export(ckpt_path: str | Path) -> tuple[Path | None, str]:
    """(``model.int8.onnx`` beside ``ckpt_path`` when it was quantized from these weights, is the file its
    record checked and passed that check, else None; why not)."""
    int8, record, why_not = _export_of(ckpt_path, INT8_NAME)
    if not record:
        return None, why_not
    if record.get("sha256") != sha256_file(int8):
        return None, f"{int8} is not the file its record checked (replaced since): export it again"
    if record.get("checked_with") != checked_with(int8.parent):
        return None, (
            f"{int8} was checked with another temperature / other thresholds than those beside the weights "
            "now: export it again"
        )
    if record.get("usable") is not True:
        refusal = (record.get("validation") or {}).get("refusal") or "no accuracy check recorded"
        return None, f"{int8} did not pass its accuracy check against fp32: {refusal}"
    if (record.get("quantization") or {}).get("reduce_range") is False and not cpu_has_vnni():
        return None, (
            f"{int8} has full 8-bit weights, checked on a CPU with int8 dot-product instructions (VNNI / AMX); "
            "this CPU lacks them and its answers may differ: export it again here (7-bit weights)"
        )
    why_not = _missing_weights(int8)
    return (None if why_not else int8), why_not


def _export_of(ckpt_path: str | Path, name: str) -> tuple[Path, dict | None, str]:
    """The export ``name`` beside ``ckpt_path``, its record when it names these weights (else None), why not."""
    path = Path(ckpt_path).with_name(name)
    record_path = export_record_path(path)
    if not path.is_file():
        how = "`cit export --format onnx" + (" --int8`" if name == INT8_NAME else "`")
        return path, None, f"no ONNX export at {path} (make one with {how})"
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError):
        return (
            path,
            None,
            f"{path} has no readable export record {record_path.name}: export it again with `cit export`",
        )
    if not isinstance(record, dict) or record.get("source_weights_sha256") != sha256_file(ckpt_path):
        return (
            path,
            None,
            f"{path} was exported from other weights than {Path(ckpt_path).name}: export it again",
        )
    return path, record, ""


def _missing_weights(path: Path) -> str:
    """Why the export ``path`` cannot run: a weights file its graph names is missing ('' when none)."""
    try:
        files = onnx_weight_files(path)
    except Exception:  # noqa: BLE001 - no `onnx` package (Deploy, Label) or a graph it cannot parse:
        return ""  # ONNX Runtime's own load error says what is wrong, and the run's fingerprint sees a change
    missing = [f.name for f in files if not f.is_file()]
    return f"{path} lacks its weights file {', '.join(missing)}: export it again" if missing else ""


def exported_model(ckpt_path: str | Path, backend: str) -> Path | None:
    """The file an ONNX Runtime ``backend`` runs for ``ckpt_path`` (None: PyTorch, or no current export)."""
    if backend == "onnxruntime":
        return current_onnx_export(ckpt_path)[0]
    if backend == "onnxruntime-int8":
        return current_int8_export(ckpt_path)[0]
    return None


def resolve_backend(
    requested: str, ckpt_path: str | Path, device: torch.device, precision: str = "fp32"
) -> str:
    """``pytorch``, ``onnxruntime`` or ``onnxruntime-int8`` for a run on ``device`` (module docstring).

    ``precision`` bf16 asks for the PyTorch backend: ``auto`` then picks it, an ONNX backend is refused."""
    if requested not in BACKENDS:
        raise ValueError(f"unknown backend {requested!r}; choose one of {BACKENDS}")
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {PRECISIONS}")
    if requested == "pytorch" or (requested == "auto" and precision != "fp32"):
        return "pytorch"
    if precision != "fp32":
        raise ValueError(f"--precision {precision} is a precision of the pytorch backend, not of {requested}")
    if requested != "auto":
        if device.type != "cpu":
            raise ValueError(f"the {requested} backend runs on the CPU, not on {device}: pass --device cpu")
        found, why_not = (current_int8_export if requested == "onnxruntime-int8" else current_onnx_export)(
            ckpt_path
        )
        if found is None:
            raise FileNotFoundError(why_not)
        return requested
    if device.type != "cpu" or not _onnxruntime_installed():
        return "pytorch"
    for backend, current in (("onnxruntime-int8", current_int8_export), ("onnxruntime", current_onnx_export)):
        found, why_not = current(ckpt_path)
        if found is not None:
            logger.info(
                "backend: ONNX Runtime on %s (CPU, checked export of these weights found)", found.name
            )
            return backend
        logger.debug("backend %s not chosen: %s", backend, why_not)
    return "pytorch"


def run_precision(backend: str, precision: str, device: torch.device, ckpt_path: str | Path) -> str:
    """The precision the network runs in: ``int8`` for the int8 export, else ``precision`` once checked
    (bf16 only on a CPU whose oneDNN has native bf16, and only for weights whose bf16 check passed;
    ValueError in one line otherwise)."""
    if backend == "onnxruntime-int8":
        return "int8"
    if precision == "bf16":
        if device.type != "cpu":
            raise ValueError(
                f"--precision bf16 is for CPU runs (on {device} cit infer uses float16 autocast)"
            )
        if not cpu_has_native_bf16():
            raise ValueError(
                "--precision bf16 refused: this CPU has no native bf16 (oneDNN reports no AVX512-BF16 / AMX "
                "support), where bf16 would be emulated and slower than fp32; run without --precision"
            )
        why_not = bf16_refusal(ckpt_path)
        if why_not:
            raise ValueError(f"--precision bf16 refused: {why_not}")
    return precision


def bf16_refusal(ckpt_path: str | Path) -> str:
    """Why the weights ``ckpt_path`` may not run in bf16 ('' when their bf16 check is current and passed)."""
    record_path = bf16_record_path(ckpt_path)
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError):
        return (
            f"no accuracy check of bf16 against fp32 for {Path(ckpt_path).name} ({record_path.name} is missing "
            "or unreadable); make it with `cit export --format bf16-check`"
        )
    if not isinstance(record, dict) or record.get("source_weights_sha256") != sha256_file(ckpt_path):
        return (
            f"{record_path} checked other weights than {Path(ckpt_path).name}: check again with `cit export`"
        )
    if record.get("checked_with") != checked_with(Path(ckpt_path).parent):
        return f"{record_path} was made with another temperature / other thresholds: check again"
    if record.get("usable") is not True:
        return f"bf16 did not pass its accuracy check against fp32: {(record.get('validation') or {}).get('refusal')}"
    return ""


class Bf16Network:
    """The PyTorch network under CPU bf16 autocast (weights stay fp32; logits come back as float)."""

    def __init__(self, network: torch.nn.Module):
        self.network = network

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return self.network(images).float()


def _onnxruntime_installed() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True
