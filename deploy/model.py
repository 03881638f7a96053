"""The model of the app: one of our trained bundles, as an exported folder or as ``model.ts``.

Both become a :class:`toolkit.bundle.InferenceBundle` (network, preprocessing, postprocessing, class
names) so that the app computes what ``cit infer`` computes:

- a bundle folder (``cit export --format bundle``; holds ``configs/inference.json``) goes through
  :func:`toolkit.bundle.load_bundle`, exactly as ``cit infer --bundle`` loads it;
- ``model.ts`` (``cit export --format torchscript``) is the network; the ``inference.json`` and
  ``metadata.json`` stored inside it (as MONAI Deploy's bundle operator reads them) give the
  preprocessing, the postprocessing and the bundle's name, with ``ckpt_path`` pointed at the
  ``.ts`` so that ``model_info.json`` (and ``temperature.json``) are read beside it.

``-m`` may also name a folder holding one of these (the MAP's ``/opt/holoscan/models``).
Either way the configs are code: one holding anything this toolkit's own bundles do not is refused
unless ``CIT_TRUST_BUNDLE=1`` (:mod:`toolkit.bundle.trust`).

What runs the network is chosen as ``cit infer --backend`` chooses it (:func:`select_backend`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from monai.bundle import ConfigParser

from toolkit.bundle import InferenceBundle, load_bundle
from toolkit.bundle.description import load_model_info
from toolkit.bundle.loading import assemble_bundle
from toolkit.bundle.trust import check_config, trusted_by_environment
from toolkit.inference.backends import OnnxRuntimeNetwork, exported_model, resolve_backend, run_precision

BACKEND_ENV = "CIT_DEPLOY_BACKEND"


def resolve_device(requested: str | None = None) -> torch.device:
    """``CIT_DEPLOY_DEVICE`` (cpu / cuda / cuda:N) if set, else the GPU when there is one."""
    requested = requested or os.environ.get("CIT_DEPLOY_DEVICE", "")
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def find_model(path: str | os.PathLike) -> Path:
    """The bundle folder or ``.ts`` file that ``path`` names or holds (searched two levels down)."""
    path = Path(path).resolve()
    if path.is_file():
        if path.suffix != ".ts":
            raise ValueError(f"{path}: the model must be a TorchScript file (.ts) or a bundle folder")
        return path
    if (path / "configs" / "inference.json").is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"model path {path} does not exist")
    candidates = sorted({p.parent.parent for p in path.glob("*/configs/inference.json")})
    candidates += sorted(path.glob("*.ts")) + sorted(path.glob("*/*.ts"))
    if len(candidates) != 1:
        found = ", ".join(str(c) for c in candidates) or "none"
        raise FileNotFoundError(
            f"{path}: expected one bundle folder (configs/inference.json) or one model .ts, found {found}"
        )
    return candidates[0]


def load_model(path: str | os.PathLike, device: torch.device) -> InferenceBundle:
    """Load the model ``path`` names (see :func:`find_model`) for inference on ``device``."""
    model = find_model(path)
    if model.is_dir():
        return load_bundle(model, device=device)
    return _load_torchscript(model, device)


def select_backend(
    bundle: InferenceBundle, device: torch.device, requested: str | None = None
) -> tuple[str, str]:
    """``(backend, precision)`` for ``bundle`` on ``device``, as ``cit infer --backend`` chooses: ``requested``
    (default ``$CIT_DEPLOY_BACKEND``, else ``auto``: on a CPU the checked int8 ONNX export of these very
    weights, else their fp32 export, else PyTorch). For an ONNX backend ``bundle.network`` becomes ONNX
    Runtime on that export. A ``.ts`` model is TorchScript, with no export of its own: PyTorch."""
    requested = requested or os.environ.get(BACKEND_ENV) or "auto"
    if Path(bundle.ckpt_path).suffix == ".ts":
        if requested not in ("auto", "pytorch"):
            raise ValueError(
                f"{BACKEND_ENV}={requested}: {bundle.ckpt_path} is TorchScript, run by PyTorch; the ONNX "
                "backends run the exports beside a bundle folder's models/model.pt"
            )
        backend = "pytorch"
    else:
        try:
            backend = resolve_backend(requested, bundle.ckpt_path, device)
        except (ValueError, FileNotFoundError) as exc:  # a wrong value, or no usable export of that kind
            raise type(exc)(f"{BACKEND_ENV}={requested}: {exc}") from exc
    if backend != "pytorch":
        bundle.network = OnnxRuntimeNetwork(exported_model(bundle.ckpt_path, backend))
    return backend, run_precision(backend, "fp32", device, bundle.ckpt_path)


def _load_torchscript(path: Path, device: torch.device) -> InferenceBundle:
    extra = {"metadata.json": "", "inference.json": ""}
    network = torch.jit.load(str(path), map_location=device, _extra_files=extra).eval()
    if not extra["inference.json"]:
        raise ValueError(f"{path} holds no inference.json: export it with `cit export --format torchscript`")
    meta = json.loads(extra["metadata.json"] or "{}")
    config = json.loads(extra["inference.json"])
    if not trusted_by_environment():  # the config inside the file is code, as a bundle folder's is
        check_config(config, f"{path} (its inference.json)")
    parser = ConfigParser(config)
    parser["bundle_root"] = str(path.parent.parent)
    parser["ckpt_path"] = str(path)  # model_info.json / temperature.json are read beside it
    if "device" in parser:
        parser["device"] = f"$torch.device('{device}')"
    info = load_model_info(path)  # a clear error when model_info.json is not beside the .ts
    parser["model_info"] = info
    return assemble_bundle(parser, info, network, path.parent, str(meta.get("name", path.stem)), meta, path)
