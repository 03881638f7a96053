"""What decides the rows of a `cit infer` run, as one fingerprint, so that a resumed run never mixes results.

The fingerprint hashes the model (SHA-256 of the weights file, its ``model_info.json`` description, the
temperature and multi-label thresholds saved beside it, the ONNX file, fp32 or int8, when an ONNX
Runtime backend runs it), the bundle's inference config (base macros resolved, ``--set`` overrides
included) and the options that change rows (frames policy, Grad-CAM, patient columns, path
pseudonymisation, DICOM filters, backend and precision). Every journal row carries it; ``run.json`` in
the output folder holds its parts, readable, so a refusal can name what changed. No absolute path goes
into either.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

from toolkit.bundle import InferenceBundle
from toolkit.bundle.configs import BASE_PREFIX, base_config_dir
from toolkit.evaluation.calibration import TEMPERATURE_FILE, load_temperature
from toolkit.inference.backends import exported_model
from toolkit.io import sha256_file

RUN_FILE = "run.json"


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _config_texts(root: Path) -> dict[str, str]:
    """The text of the bundle's inference.json and of every shared base file its macros pull (recursively),
    by name relative to the repository, so that moving the repository keeps the fingerprint."""
    base = base_config_dir(root)
    texts: dict[str, str] = {}
    todo = [("inference.json", root / "configs" / "inference.json")]
    while todo:
        name, path = todo.pop()
        if name in texts or not path.is_file():
            continue
        texts[name] = path.read_text()
        for ref in _base_refs(json.loads(texts[name])):
            todo.append((f"base/{ref}", base / ref))
    return texts


def _base_refs(value) -> set[str]:
    """File names of the ``%configs/base/<file>#...`` macros in a config."""
    if isinstance(value, dict):
        return set().union(*(_base_refs(v) for v in value.values())) if value else set()
    if isinstance(value, list):
        return set().union(*(_base_refs(v) for v in value)) if value else set()
    if isinstance(value, str) and value.startswith(BASE_PREFIX):
        return {value[len(BASE_PREFIX) :].split("#", 1)[0]}
    return set()


def run_identity(bundle: InferenceBundle, options) -> dict:
    """The parts of the fingerprint of a run of ``bundle`` with ``options`` (``InferenceOptions``) and
    the fingerprint itself (``"fingerprint"``, 16 hex digits)."""
    ckpt = Path(bundle.ckpt_path)
    meta_file = bundle.root / "configs" / "metadata.json"
    parts = {
        "bundle": bundle.name,
        "bundle_version": bundle.version,
        "weights_file": ckpt.name,
        "weights_sha256": sha256_file(ckpt),
        "model_info_sha256": _digest(dataclasses.asdict(bundle.model_info)),
        "temperature": load_temperature(ckpt.parent / TEMPERATURE_FILE),
        # a multi-label model's decision thresholds (evaluation rewrites them): they change the rows
        "thresholds": _as_list(bundle.thresholds),
        # the file an ONNX Runtime backend runs: its own hash, not only the weights it was made from
        "onnx_sha256": _onnx_sha256(ckpt, options.backend),
        "config_sha256": _digest(
            {
                "configs": _config_texts(bundle.root),
                "overrides": options.overrides,
                "metadata": meta_file.read_text() if meta_file.is_file() else None,
            }
        ),
        "options": {
            "frames": options.frames,
            "gradcam": bool(options.gradcam),
            "include_patient_info": bool(options.include_patient_info),
            "pseudonymise_paths": bool(options.pseudonymise_paths),
            # as run.json reads back (lists, not tuples), so a refusal names only real changes
            "filters": json.loads(json.dumps(dataclasses.asdict(options.filters))),
            "backend": options.backend,
            "precision": options.precision,
        },
    }
    return {"fingerprint": _digest(parts)[:16], **parts}


def _as_list(values):
    return values.tolist() if hasattr(values, "tolist") else values


def _onnx_sha256(ckpt: Path, backend: str) -> str | None:
    onnx = exported_model(ckpt, backend)
    return sha256_file(onnx) if onnx is not None else None


def describe_change(old: dict, new: dict) -> str:
    """What differs between two ``run_identity`` results, in a few words ("weights sha256 1a2b3c4d -> ...")."""
    changes = []
    labels = {
        "weights_sha256": "weights",
        "onnx_sha256": "ONNX export",
        "model_info_sha256": "model_info.json",
        "config_sha256": "bundle config",
    }
    for key, label in labels.items():
        if old.get(key) != new.get(key):
            changes.append(f"{label} sha256 {str(old.get(key))[:8]} -> {str(new.get(key))[:8]}")
    for key in ("temperature", "thresholds"):
        if old.get(key) != new.get(key):
            changes.append(f"{key} {old.get(key)} -> {new.get(key)}")
    old_opts, new_opts = old.get("options") or {}, new.get("options") or {}
    for key in sorted(set(old_opts) | set(new_opts)):
        if old_opts.get(key) != new_opts.get(key):
            changes.append(f"{key} {old_opts.get(key)} -> {new_opts.get(key)}")
    return ", ".join(changes)
