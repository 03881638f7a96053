"""Infer task for an exported classification bundle.

MONAI Label's stock ``BundleInferTask(type=CLASSIFICATION, add_post_restore=False)`` runs our bundles
unchanged (``preprocessing`` ends in a tensor, ``postprocessing`` is a ``Compose``, ``network_def``
rebuilds the trained network, ``bundle_root`` is set by MONAI Label). This subclass only changes what
is wrong for our 2D classification models:

- **class names**: the stock task takes them from ``metadata.json``'s ``channel_def`` lower-cased and
  drops any class called "background"; here they are the bundle's ``class_names`` (read from the
  trained model's ``models/model_info.json``) in their own spelling, checked against ``metadata.json``
  so a stale description stops the server instead of mislabelling scores.
- **strict weights**: the stock task loads the checkpoint with ``strict=False`` and only logs a
  warning when keys differ, which serves a randomly initialised network; here a mismatch is an error.
- **result**: the stock ``ClassificationWriter`` needs a ``MetaTensor`` (``.array``) and reports a
  score per class only; here any tensor is accepted and the result also names the predicted class and
  says whether the scores are softmax probabilities or independent (multi-label) sigmoids, and the
  ``backend`` / ``precision`` the network ran in.
- **backend**: on a CPU the network is chosen as ``cit infer --backend`` chooses it
  (``toolkit.inference.backends``; ``$CIT_LABEL_BACKEND``, default ``auto``): ONNX Runtime on the bundle's
  checked int8 export of these very weights, else on their fp32 export, else PyTorch (MONAI Label's own
  network, as on a GPU).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from monai.transforms import SaveImaged
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.bundle import BundleInferTask

from toolkit.inference.backends import (
    BACKENDS,
    OnnxRuntimeNetwork,
    exported_model,
    resolve_backend,
    run_precision,
)

logger = logging.getLogger(__name__)

BACKEND_ENV = "CIT_LABEL_BACKEND"


class ClassificationBundleInferTask(BundleInferTask):
    def __init__(self, path: str, conf: dict[str, str], **kwargs):
        self.requested_backend = os.environ.get(BACKEND_ENV) or "auto"
        if self.requested_backend not in BACKENDS:
            raise ValueError(f"{BACKEND_ENV}={self.requested_backend}: choose one of {', '.join(BACKENDS)}")
        self._backend_choice: dict = {}  # before super().__init__, which may preload the network
        super().__init__(
            path,
            conf,
            type=InferType.CLASSIFICATION,
            add_post_restore=False,  # a class-score vector has no image geometry to restore
            post_filter=[SaveImaged],
            load_strict=True,
            **kwargs,
        )
        if not self.valid:
            return
        self.class_names = [str(c) for c in self.bundle_config.get_parsed_content("class_names")]
        self.multi_label = bool(self.bundle_config.get_parsed_content("model_info").multi_label)
        with open(os.path.join(path, "configs", self.const.metadata_json())) as f:
            outputs = json.load(f)["network_data_format"]["outputs"]
        channel_def = next(iter(outputs.values())).get("channel_def", {})
        metadata_names = [str(name) for _, name in sorted(channel_def.items(), key=lambda kv: int(kv[0]))]
        if metadata_names and metadata_names != self.class_names:
            raise ValueError(
                f"{path}: metadata.json names classes {metadata_names} but the trained model has "
                f"{self.class_names}; re-export the bundle (cit export --format bundle)"
            )
        self.labels = {name: idx for idx, name in enumerate(self.class_names)}
        self._weights_mtime = self._weights_time()
        self.description = (
            self.description or ""
        ) + f" ({len(self.class_names)} classes: {', '.join(self.class_names)})"

    def _weights_time(self) -> float:
        weights = [os.path.join(self.bundle_path, "models", n) for n in ("model.pt", "model.ts")]
        return max((os.path.getmtime(w) for w in weights if os.path.exists(w)), default=0.0)

    def _reparse_if_retrained(self) -> None:
        """A train task replaced ``models/model.pt`` (and ``model_info.json``): parse the config again so
        the model description and temperature are read anew (MONAI Label reloads the weights itself)."""
        mtime = self._weights_time()
        if mtime != self._weights_mtime:
            self.bundle_config.parse(reset=True)
            self._weights_mtime = mtime

    def pre_transforms(self, data=None):
        self._reparse_if_retrained()
        return super().pre_transforms(data)

    def _get_network(self, device, data):
        """On a CPU the backend ``cit infer`` would choose (module docstring); its name goes into ``data`` for
        the result. PyTorch: MONAI Label's own network (``super()``). ``run_inferer`` only tests the network
        for truth and calls it (through the bundle's ``SimpleInferer``, under ``no_grad``), which
        :class:`OnnxRuntimeNetwork` supports."""
        backend, precision, network = self._choose_backend(torch.device(device))
        if data is not None:
            data.update(backend=backend, precision=precision)
        return network if network is not None else super()._get_network(device, data)

    def _choose_backend(self, device: torch.device) -> tuple[str, str, OnnxRuntimeNetwork | None]:
        """``(backend, precision, ONNX Runtime network or None for PyTorch)``. Choosing hashes the weights and
        the exports, so the choice is kept, as MONAI Label keeps its networks, while no file of ``models/``
        changes (a train task replacing ``model.pt`` makes the exports stale: PyTorch again)."""
        weights = self.get_path()
        if device.type != "cpu" or not weights or not weights.endswith(".pt"):
            return "pytorch", "fp32", None  # a GPU, or a TorchScript-only bundle: nothing exported beside it
        key = (str(device), _folder_state(Path(weights).parent))
        if key not in self._backend_choice:
            backend = resolve_backend(self.requested_backend, weights, device)
            network = OnnxRuntimeNetwork(exported_model(weights, backend)) if backend != "pytorch" else None
            logger.info("%s: backend %s on %s", os.path.basename(self.bundle_path), backend, device)
            precision = run_precision(backend, "fp32", device, weights)
            self._backend_choice = {key: (backend, precision, network)}  # only the current files' choice
        return self._backend_choice[key]

    def clear_cache(self):
        super().clear_cache()
        self._backend_choice = {}

    def info(self) -> dict[str, Any]:
        info = super().info()
        info["class_names"] = self.class_names
        info["multi_label"] = self.multi_label
        return info

    def writer(self, data: dict[str, Any], extension=None, dtype=None):
        scores = data[self.output_label_key]
        scores = (
            scores.detach().cpu().float().reshape(-1)
            if torch.is_tensor(scores)
            else torch.as_tensor(scores).reshape(-1)
        )
        if scores.numel() != len(self.class_names):
            raise ValueError(
                f"the model returned {scores.numel()} scores for {len(self.class_names)} classes"
            )
        prediction = [
            {"idx": idx, "label": name, "score": float(score)}
            for idx, (name, score) in enumerate(zip(self.class_names, scores.tolist(), strict=True))
        ]
        best = int(scores.argmax())
        result = {
            "prediction": prediction,
            "predicted": self.class_names[best],
            "predicted_idx": best,
            "multi_label": self.multi_label,
            "backend": data.get("backend", "pytorch"),
            "precision": data.get("precision", "fp32"),
        }
        return None, result


def _folder_state(folder: Path) -> tuple:
    """(name, mtime, size) of each file in ``folder``; one removed while it is listed is left out."""
    state = []
    for entry in os.scandir(folder):
        try:
            stat = entry.stat()
        except FileNotFoundError:
            continue
        state.append((entry.name, stat.st_mtime_ns, stat.st_size))
    return tuple(sorted(state))
