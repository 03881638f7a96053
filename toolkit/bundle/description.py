"""The trained model describes itself: ``models/model_info.json`` beside ``models/model.pt``.

Training writes what every consumer needs to rebuild the model and feed it: the network
(``toolkit.networks.create_network`` arguments), the class names, the evaluation preprocessing
(the bundle's chain recorded as data, ``transforms``, and the facts read from it: input size,
channels, colour, intensity family; for 3D models ``spatial_dims`` 3 and the voxel spacing / fit;
records written before the chain was recorded hold the facts only, and are read as the chain they stood
for, :mod:`toolkit.bundle.legacy_records`) and
the fingerprint of the split it was trained on. Evaluation, bundle inference, `cit infer` and
`cit report` read it, so no training choice has to be repeated as an override; an override that
contradicts it is an error, since it would silently change the predictions.
The file sits in the checkpoint's folder, so a ``ckpt_path`` pointing elsewhere brings its own.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from toolkit.bundle.datalists import read_json_object
from toolkit.bundle.legacy_records import legacy_chain
from toolkit.io import atomic_write_json
from toolkit.networks import create_network
from toolkit.transforms.recorded import RecordedChainError, check_record, record_steps, recorded_transforms
from toolkit.transforms.volumes import FIT_MODES

logger = logging.getLogger(__name__)

INFO_NAME = "model_info.json"
FORMAT_VERSION = 1
# override id in a bundle config -> where its value lives in the description
OVERRIDABLE = {
    "model_name": ("network", "name"),
    "image_size": ("preprocessing", "image_size"),
    "channels": ("preprocessing", "channels"),
    "intensity": ("preprocessing", "intensity"),
}


class ModelInfoMismatchError(ValueError):
    """An explicit override contradicts what the trained model was made with."""


@dataclass
class ModelInfo:
    """What ``model_info.json`` holds; see the module docstring."""

    network: dict
    class_names: list[str]
    preprocessing: dict
    multi_label: bool = False
    split_fingerprint: str | None = None
    bundle_name: str | None = None
    start: dict | None = None  # what training started from (weights_start); None in older records
    extra: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def as_record(self) -> dict:
        """What defines the model (network, classes, preprocessing), as an inference.json's ``study_model``:
        without the recorded chain, whose ``_target_`` entries MONAI's parser would build inside a bundle
        config (the weights' own ``model_info.json`` holds it)."""
        return {
            "network": self.network,
            "class_names": self.class_names,
            "preprocessing": {k: v for k, v in self.preprocessing.items() if k != "transforms"},
            "multi_label": self.multi_label,
        }

    def create_network(self) -> torch.nn.Module:
        """The untrained network of this model (weights are loaded by the caller)."""
        return create_network(**self.network, pretrained=None)

    def preprocessing_transforms(self, label_key: str | None = "label"):
        """The evaluation chain this model was validated with (``label_key=None`` for unlabelled input)."""
        return preprocessing_transforms(self.preprocessing, label_key=label_key)


def preprocessing_transforms(preprocessing: dict, label_key: str | None = "label"):
    """The evaluation chain ``preprocessing`` (a model record's) describes: its recorded steps
    (``"transforms"``, :mod:`toolkit.transforms.recorded`), or, for a record written before bundles
    stated their chain and an untrained bundle's ``study_model``, the chain its facts stood for.
    ``label_key``: ``None`` for unlabelled input."""
    record = preprocessing["transforms"] if "transforms" in preprocessing else legacy_chain(preprocessing)
    return recorded_transforms(record, label_key=label_key)


def weights_start(network: torch.nn.Module) -> dict:
    """What training started from, for the record and the exported metadata: ``{"pretrained": False}``
    (random initialisation, also when requested weights were not found), or the weights file's name and
    how many tensors it gave (``create_network``'s ``pretrained_report``)."""
    report = getattr(network, "pretrained_report", None)
    if report is None or not report.loaded:
        return {"pretrained": False}
    return {"pretrained": True, "source": Path(str(report.source)).name, "tensors_loaded": len(report.loaded)}


def require_weights(ckpt: str | os.PathLike) -> None:
    """Stop a run that needs trained weights before it starts, naming the file and the way to get it."""
    if not Path(ckpt).is_file():
        raise FileNotFoundError(
            f"{Path(ckpt).resolve()} is missing: pass --bundle_root <bundle folder> (an exported bundle's "
            "bundle_root is '.', the folder the command runs in) or --ckpt_path <trained model.pt>, or train "
            "the bundle first (python -m monai.bundle run training --config_file <bundle>/configs/train.json)"
        )


def chain_preprocessing(
    image_size, channels: int, colour: str, loading: list, normalisation: list, **facts: Any
) -> dict:
    """The evaluation preprocessing of a bundle that states its chain in train.json (``loading``,
    ``normalisation``): the recorded steps (``"transforms"``) and the facts other parts read: input
    size, channels and colour policy as configured, ``facts`` (3D: ``spatial_dims``, ``spacing``,
    ``fit``), and, read from the steps, the reader's size limit and the intensity family
    (``imagenet`` with its mean / std, ``minmax``, else ``recorded``) that a teacher's input
    conversion and a backbone's description use."""
    if facts.get("fit", FIT_MODES[0]) not in FIT_MODES:
        raise ValueError(f"fit must be one of {FIT_MODES}, got {facts['fit']!r}")
    loading, normalisation = record_steps(loading, "loading"), record_steps(normalisation, "normalisation")
    reader = next((s["reader"] for s in loading if isinstance(s.get("reader"), dict)), {})
    return {
        "image_size": image_size,
        "reader_max_size": reader.get("max_size"),
        "channels": channels,
        "colour": colour,
        **_intensity_family(loading, normalisation),
        **facts,
        "transforms": loading + normalisation,
    }


def _intensity_family(loading: list[dict], normalisation: list[dict]) -> dict:
    """``minmax`` when the loading's one intensity step is a min-max to [0, 1] (its other steps read,
    reorient, resample and resize), ``imagenet`` when the normalisation then subtracts a mean and
    divides by a std per channel, else ``recorded`` (no preset describes it)."""
    scaling = [step for step in loading if _class_name(step) not in _GEOMETRY]
    minmax = {"_target_": "monai.transforms.ScaleIntensityd", "keys": "image", "minv": 0.0, "maxv": 1.0}
    if scaling != [minmax]:
        return {"intensity": "recorded", "intensity_kwargs": None}
    if not normalisation:
        return {"intensity": "minmax", "intensity_kwargs": None}
    step = normalisation[0]
    if len(normalisation) == 1 and _class_name(step) == "NormalizeIntensityd" and step.get("channel_wise"):
        mean, std = step.get("subtrahend"), step.get("divisor")
        if isinstance(mean, list) and isinstance(std, list):
            return {"intensity": "imagenet", "intensity_kwargs": {"mean": mean, "std": std}}
    return {"intensity": "recorded", "intensity_kwargs": None}


# loading steps that leave intensities as they are (up to interpolation)
_GEOMETRY = frozenset(
    (
        "LoadImaged",
        "EnsureChannelFirstd",
        "SelectSliced",
        "SelectVolumed",
        "AsChannelsd",
        "Orientationd",
        "Spacingd",
        "Resized",
        "ResizeWithPadOrCropd",
    )
)


def _class_name(step: dict) -> str:
    return step["_target_"].rpartition(".")[2]


def info_path(ckpt: str | os.PathLike) -> Path:
    """``model_info.json`` for a checkpoint file or a checkpoint folder."""
    ckpt = Path(ckpt)
    return (ckpt if ckpt.is_dir() or not ckpt.suffix else ckpt.parent) / INFO_NAME


def write_model_info(
    ckpt_dir: str | os.PathLike,
    network: dict,
    class_names: list[str],
    preprocessing: dict,
    multi_label: bool = False,
    datalist_file: str | None = None,
    bundle_name: str | None = None,
    start: dict | None = None,
) -> ModelInfo:
    """Write ``<ckpt_dir>/model_info.json`` at the start of training; returns what was written.

    ``network`` holds ``create_network`` arguments that define the architecture (``name``,
    ``num_classes``, ``in_channels``, extra model options); weight options (``pretrained``,
    ``freeze``...) are not part of it. ``preprocessing`` is :func:`chain_preprocessing`'s: the
    recorded evaluation chain and the facts read from it.
    """
    split_fp = read_json_object(Path(datalist_file)).get("split_fingerprint") if datalist_file else None
    info = ModelInfo(
        network={k: v for k, v in network.items() if v is not None},
        class_names=[str(c) for c in class_names],
        preprocessing={k: v for k, v in preprocessing.items() if v is not None},
        multi_label=bool(multi_label),
        split_fingerprint=split_fp,
        bundle_name=bundle_name,
        start=start,
    )
    if info.network.get("num_classes") not in (None, info.num_classes):
        raise ValueError(
            f"network num_classes {info.network['num_classes']} != {info.num_classes} class names"
        )
    dims = {
        "network": info.network.get("spatial_dims", 2),
        "preprocessing": info.preprocessing.get("spatial_dims", 2),
    }
    if dims["network"] != dims["preprocessing"]:
        raise ValueError(
            f"the network is {dims['network']}D but the preprocessing {dims['preprocessing']}D: a bundle "
            "setting model_kwargs spatial_dims must set preprocessing_kwargs spatial_dims to the same value"
        )
    doc = {"format": FORMAT_VERSION, **_as_dict(info)}
    atomic_write_json(info_path(ckpt_dir), doc)
    logger.info("model description written to %s", info_path(ckpt_dir))
    return info


def bundle_network(ckpt: str | os.PathLike, **configured: Any) -> torch.nn.Module:
    """A train.json's top-level ``network_def``: the network that the bundle's ``models/`` holds.

    Built from the recorded description (``model_info.json`` in the folder ``ckpt``) once the bundle
    has been trained, else from ``configured`` (``create_network``'s arguments as the bundle's
    configuration states them, without pretrained weights). ``monai.bundle.load`` fills this network
    with ``copy_model_state``, which skips tensors of another shape without a word: a model trained on
    other classes than the study's must come back whole, not with a new random head.
    """
    if info_path(ckpt).is_file():
        return load_model_info(ckpt).create_network()
    return create_network(**configured, pretrained=None)


def load_model_info(ckpt: str | os.PathLike, untrained: dict | None = None, **overrides: Any) -> ModelInfo:
    """Read ``model_info.json`` beside ``ckpt`` (a file or folder), checking explicit ``overrides``.

    ``overrides`` are the bundle ids of :data:`OVERRIDABLE` (``None`` = not given). A given value
    that differs from the description raises :class:`ModelInfoMismatchError`.
    ``untrained``: the description a bundle states for its study's model (an inference.json's
    ``study_model``), used while there is neither a record nor weights, so that MONAI's bundle
    tools (property check, ``verify_net_in_out``, ``ckpt_export``) can build the bundle as
    shipped; weights without a record stay an error.
    """
    path = info_path(ckpt)
    shipped_untrained = untrained is not None and not path.is_file() and not Path(ckpt).is_file()
    if not path.is_file() and not shipped_untrained:
        raise FileNotFoundError(
            f"{path} is missing: it is written when the bundle is trained and describes the model "
            "(network, classes, input size). Train the bundle, or point ckpt_path at a trained model's folder."
        )
    try:
        doc = untrained if shipped_untrained else json.loads(path.read_text(encoding="utf-8"))
        info = ModelInfo(
            network=dict(doc["network"]),
            class_names=[str(c) for c in doc["class_names"]],
            preprocessing=dict(doc["preprocessing"]),
            multi_label=bool(doc.get("multi_label", False)),
            split_fingerprint=doc.get("split_fingerprint"),
            bundle_name=doc.get("bundle_name"),
            start=doc.get("start"),
        )
        if "transforms" not in info.preprocessing:  # an older record, or an untrained bundle's study_model
            info.preprocessing["transforms"] = legacy_chain(info.preprocessing)
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path} is not a valid model description: {err!r}") from err
    try:  # configuration that names classes to build: data only
        check_record(info.preprocessing["transforms"], "preprocessing#transforms")
    except RecordedChainError as err:
        raise RecordedChainError(f"{path}: {err}; the model is refused") from None
    contradictions = []
    for key, value in overrides.items():
        if key not in OVERRIDABLE:
            raise KeyError(f"unknown model-description override {key!r}; known: {sorted(OVERRIDABLE)}")
        section, name = OVERRIDABLE[key]
        recorded = getattr(info, section).get(name)
        if value is not None and value != "" and _same(value) != _same(recorded):
            contradictions.append(f"{key}={value!r} (trained with {recorded!r})")
    if contradictions:
        raise ModelInfoMismatchError(
            f"{path}: "
            + ", ".join(contradictions)
            + ": these would change the predictions of the trained model; drop the override(s)"
        )
    return info


def _as_dict(info: ModelInfo) -> dict:
    return {
        "bundle_name": info.bundle_name,
        "network": info.network,
        "class_names": info.class_names,
        "multi_label": info.multi_label,
        "preprocessing": info.preprocessing,
        "split_fingerprint": info.split_fingerprint,
        "start": info.start,
    }


def _same(value):
    """Command-line values arrive as strings or numbers: compare as text of ints where possible."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return str(value)
