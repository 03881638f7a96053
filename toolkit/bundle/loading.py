"""Loading what batch inference and reports need from a bundle's ``configs/inference.json``.

The same config ids that ``python -m monai.bundle run inference`` evaluates (``preprocessing``,
``network``, ``ckpt_path``, ``postprocessing``, ``class_names``) are parsed with MONAI's own
``ConfigParser``, so `cit infer` and the bundle give the same numbers for the same input.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser

from toolkit.bundle.configs import read_config
from toolkit.bundle.description import OVERRIDABLE, ModelInfo, load_model_info
from toolkit.bundle.trust import check_bundle
from toolkit.evaluation.thresholds import THRESHOLDS_FILE, load_thresholds, threshold_vector


@dataclass
class InferenceBundle:
    """The parsed parts of a bundle used by :mod:`toolkit.inference.runner`."""

    root: Path
    name: str
    version: str
    class_names: list[str]
    preprocessing: Any  # callable: {"image": path} -> {"image": tensor, ...}
    postprocessing: Any  # callable: {"pred": logits} -> {"pred": probabilities}
    image_size: tuple[int, ...] | None
    spatial_dims: int
    ckpt_path: str
    model_info: ModelInfo
    thresholds: Any = 0.5  # multi-label: per-class decision thresholds (models/thresholds.json), else 0.5
    build_network: Callable[[], torch.nn.Module] | None = field(default=None, repr=False)
    _network: Any = field(default=None, repr=False)

    @property
    def network(self) -> Any:
        """The network with the trained weights (built by ``build_network`` on first use, so that a run
        on an ONNX export does not build it), or what replaced it (ONNX Runtime, in the Deploy app)."""
        if self._network is None:
            self._network = self.build_network()
        return self._network

    @network.setter
    def network(self, value: Any) -> None:
        self._network = value

    def decide(self, probs: torch.Tensor) -> tuple[int | str, str]:
        """``(pred, pred_name)`` of one item: the arg-max class, or for a multi-label model the 0/1 flag
        of every class at its threshold (``"0|1|0"``) and the names of the positive ones (``"b"``)."""
        if not self.model_info.multi_label:
            pred = int(torch.argmax(probs))
            return pred, self.class_names[pred]
        flags = (probs.cpu().numpy() >= self.thresholds).astype(int).tolist()
        names = [n for n, f in zip(self.class_names, flags, strict=True) if f]
        return "|".join(map(str, flags)), "|".join(names)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Apply the bundle's postprocessing to one item's logits ``(C,)``; returns probabilities ``(C,)``."""
        out = self.postprocessing({"pred": logits}) if self.postprocessing is not None else {"pred": logits}
        pred = out["pred"] if isinstance(out, dict) else out
        return torch.as_tensor(pred).float().reshape(-1)


def load_weights(network: torch.nn.Module, ckpt_path: str | os.PathLike) -> None:
    """Load ``ckpt_path`` into ``network`` as the bundle's ``CheckpointLoader`` handler does.

    Accepts a plain state dict (``models/model.pt``) or a training checkpoint holding it under
    ``"model"``. Loading is idempotent, so configs whose ``network`` id loads the weights itself work too.
    """
    state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    target = network.module if isinstance(network, torch.nn.parallel.DistributedDataParallel) else network
    target.load_state_dict(state, strict=True)


def load_bundle(
    bundle_dir: str | os.PathLike,
    ckpt_path: str | None = None,
    device: str | torch.device = "cpu",
    overrides: dict | None = None,
    trust: bool = False,
) -> InferenceBundle:
    """Parse ``bundle_dir/configs/inference.json`` (+ ``metadata.json``) into an :class:`InferenceBundle`.

    A folder from outside this repository is checked first (:func:`toolkit.bundle.trust.check_bundle`:
    no code beyond what this toolkit's bundles hold) unless ``trust``.

    ``ckpt_path`` replaces the bundle's ``ckpt_path`` (e.g. a model trained elsewhere; its
    ``model_info.json``, ``temperature.json`` and ``thresholds.json`` are read from the same folder); ``overrides``
    are extra ``{id: value}`` pairs, as ``monai.bundle run --id value`` would take. Overrides of
    ``model_name`` / ``image_size`` / ``channels`` must agree with the model's description.
    """
    root = Path(bundle_dir).resolve()
    config_file = root / "configs" / "inference.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{root} is not a bundle: {config_file} is missing")
    check_bundle(root, trust)
    meta_file = root / "configs" / "metadata.json"
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}

    parser = ConfigParser(read_config(config_file, bundle_root=root))
    if meta_file.is_file():
        parser.read_meta(str(meta_file))
    parser["bundle_root"] = str(root)
    if ckpt_path is not None:
        parser["ckpt_path"] = str(Path(ckpt_path).resolve())
    if "device" in parser:
        parser["device"] = f"$torch.device('{torch.device(device)}')"
    for key, value in (overrides or {}).items():
        parser[key] = value
    for required in ("preprocessing", "network", "class_names", "model_info", "ckpt_path"):
        if required not in parser:
            raise KeyError(f"{config_file}: config id '{required}' is missing")
    ckpt = parser.get_parsed_content("ckpt_path")
    if not Path(ckpt).is_file():
        raise FileNotFoundError(
            f"model weights not found: {ckpt} (train the bundle first or pass --ckpt-path)"
        )
    # read here rather than through the config, so that a missing or contradicted description is
    # reported as itself and not wrapped in MONAI's "Failed to evaluate" error
    info = load_model_info(ckpt, **{k: (overrides or {}).get(k) for k in OVERRIDABLE})
    parser["model_info"] = info

    def trained_network() -> torch.nn.Module:
        network = parser.get_parsed_content("network")
        load_weights(network, ckpt)
        return network.eval()

    return assemble_bundle(parser, info, trained_network, root, str(meta.get("name", root.name)), meta, ckpt)


def assemble_bundle(
    parser: ConfigParser,
    info: ModelInfo,
    network: torch.nn.Module | Callable[[], torch.nn.Module],
    root: Path,
    name: str,
    meta: dict,
    ckpt_path: str | os.PathLike,
) -> InferenceBundle:
    """The :class:`InferenceBundle` of a parsed inference config (its ``model_info`` set to ``info``)
    and a network holding the trained weights, or a function that builds it when first used; also used
    by the MONAI Deploy app for ``model.ts``."""
    spatial_dims = int(info.network.get("spatial_dims", 2))
    size = info.preprocessing.get("image_size")
    image_size = (
        tuple(int(s) for s in (size if isinstance(size, (list, tuple)) else [size] * spatial_dims))
        if size
        else None
    )
    return InferenceBundle(
        root=root,
        name=name,
        version=str(meta.get("version", "")),
        class_names=list(info.class_names),
        preprocessing=parser.get_parsed_content("preprocessing"),
        postprocessing=parser.get_parsed_content("postprocessing") if "postprocessing" in parser else None,
        image_size=image_size,
        spatial_dims=spatial_dims,
        ckpt_path=str(ckpt_path),
        model_info=info,
        thresholds=_thresholds(info, ckpt_path),
        **({"_network": network} if isinstance(network, torch.nn.Module) else {"build_network": network}),
    )


def _thresholds(info: ModelInfo, ckpt_path: str | os.PathLike):
    """A multi-label model's per-class thresholds chosen on validation by its evaluation, else 0.5."""
    path = Path(ckpt_path).parent / THRESHOLDS_FILE
    if not info.multi_label or not path.is_file():
        return 0.5
    return threshold_vector(load_thresholds(path), info.class_names)
