"""Backbones from this project's own pretraining, and the guard that keeps their images out of evaluations.

A pretraining run (``bundles/pretrain_ssl``: self-supervised, or supervised on another labelled
set) writes ``backbone.pt`` (the trunk's state dict: the classifier without its head) and
``backbone.json`` beside it: architecture, method, epochs, input, source folders and the SHA-256
of the bytes of every image it saw. A classification bundle takes it as ``pretrained``
(``toolkit.networks.load_pretrained`` loads the trunk; the head starts fresh).

Leakage guard: an evaluation must never score images the backbone was trained on, labels or not.
When a classification run starts from a recorded backbone, `adopt_backbone` refuses if the run's
evaluation split (``test``) holds such an image and copies the record to
``<ckpt_dir>/pretrained_backbone.json``; `check_evaluation` reads that copy and refuses an
evaluation (any split, any datalist) with such an image. Exact byte copies only: a re-encoded or
resized copy of an image has another hash (near-duplicates are the data audit's job, `cit audit`).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from toolkit.data import find_image_files, load_datalist, make_synthetic_dataset
from toolkit.data.datalist import split_keys
from toolkit.io import atomic_write_bytes, atomic_write_json, sha256_file
from toolkit.networks.weights import backbone_record_path

logger = logging.getLogger(__name__)

RECORD_FORMAT = 1
ADOPTED_NAME = "pretrained_backbone.json"
EVAL_SPLITS = ("test",)

__all__ = [
    "ADOPTED_NAME",
    "BackboneLeakageError",
    "adopt_backbone",
    "check_evaluation",
    "export_classifier_backbone",
    "pool_images",
    "read_backbone_record",
    "write_backbone",
]


class BackboneLeakageError(ValueError):
    """An evaluation split holds images the pretrained backbone was trained on."""


def _image_files(image) -> list[Path]:
    """The files of one datalist ``image`` entry (a path, a list of paths, or a folder of files)."""
    paths = image if isinstance(image, list) else [image]
    files: list[Path] = []
    for p in map(Path, paths):
        files.extend(sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p])
    return files


def _hash(path: Path) -> str:
    try:
        return sha256_file(path)
    except OSError as err:
        raise FileNotFoundError(f"cannot read image {path} to hash it: {err}") from err


def _datalist_images(path: Path, splits: Sequence[str]) -> list[Path]:
    doc = load_datalist(path)
    unknown = [s for s in splits if s not in split_keys(doc)]
    if len(unknown) == len(splits):
        raise ValueError(f"datalist {path} has none of the splits {list(splits)} (it has {split_keys(doc)})")
    return [f for s in splits for item in doc.get(s, []) for f in _image_files(item["image"])]


def _source_images(source: str | os.PathLike, splits: Sequence[str]) -> list[Path]:
    """Images of a folder (all of them, recursively) or of a datalist JSON (its ``splits``)."""
    path = Path(source).expanduser().resolve()
    if path.is_dir():
        files = find_image_files(path)
        if not files:
            raise ValueError(f"no image files (DICOM, NIfTI, PNG, JPEG...) found in {path}")
        return files
    if path.is_file() and path.suffix == ".json":
        return _datalist_images(path, splits)
    if not path.exists():
        raise FileNotFoundError(f"pretraining source not found: {path}")
    raise ValueError(
        f"pretraining source {path} must be a folder of images or a datalist JSON (cit datalist)"
    )


def _as_list(paths) -> list[str]:
    """A path or a list of paths (a command-line value may be either); empty entries dropped."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    return [str(p) for p in (paths or []) if str(p)]


def pool_images(
    sources: str | Sequence[str] | None,
    output_dir: str | os.PathLike,
    splits: Sequence[str] = ("training", "validation"),
    exclude: str | Sequence[str] = (),
    exclude_splits: Sequence[str] = EVAL_SPLITS,
    synthetic: dict | None = None,
    seed: int = 0,
) -> dict:
    """The unlabelled images a pretraining run learns from, deduplicated by content.

    ``sources``: folders (every image below them) and datalist JSONs (the items of ``splits``;
    labels are ignored); empty = the toolkit's synthetic data (``synthetic``: arguments of
    ``make_synthetic_dataset``), written under ``<output_dir>/synthetic_data``, training and
    validation patients only. ``exclude``: folders or datalists whose images must not be seen
    (for a datalist, the items of ``exclude_splits``, i.e. a target's test split); matched by hash.

    Returns ``{"items": [{"image": path}], "image_sha256": [...], "sources": [...], "excluded": n,
    "duplicates": n}``.
    """
    sources, exclude = _as_list(sources), _as_list(exclude)
    if not sources:
        options = {k: v for k, v in (synthetic or {}).items() if v is not None}
        datalist = make_synthetic_dataset(Path(output_dir) / "synthetic_data", seed=seed, **options)
        named = [f"synthetic {options or 'defaults'}, seed {seed}, splits {list(splits)}"]
        files = _datalist_images(Path(datalist), splits)
    else:
        named = [str(Path(s).expanduser().resolve()) for s in sources]
        files = [f for s in sources for f in _source_images(s, splits)]
    banned = {_hash(f) for e in exclude for f in _source_images(e, exclude_splits)} if exclude else set()
    items, hashes, seen = [], [], set()
    excluded = duplicates = 0
    for f in files:
        digest = _hash(f)
        if digest in banned:
            excluded += 1
        elif digest in seen:
            duplicates += 1
        else:
            seen.add(digest)
            items.append({"image": str(f)})
            hashes.append(digest)
    if not items:
        raise ValueError(f"no images left to pretrain on from {named} (excluded {excluded})")
    logger.info(
        "pretraining on %d images from %s (%d excluded as evaluation images, %d byte-identical duplicates dropped)",
        len(items),
        "; ".join(named),
        excluded,
        duplicates,
    )
    return {
        "items": items,
        "image_sha256": hashes,
        "sources": named,
        "excluded": excluded,
        "duplicates": duplicates,
    }


def write_backbone(
    trunk: torch.nn.Module,
    path: str | os.PathLike,
    architecture: str,
    in_channels: int,
    method: str,
    image_sha256: Iterable[str],
    sources: Sequence[str],
    epochs: int | None = None,
    image_size: int | None = None,
    **details,
) -> Path:
    """Write ``trunk``'s state dict to ``path`` and its record to ``backbone.json`` beside it.

    ``details`` (e.g. channels, intensity, colour, batch_size, model_kwargs) are added to the record.
    The record holds the SHA-256 of the weights file, so a record cannot be paired with other weights.
    """
    trunk = getattr(trunk, "module", trunk)
    if getattr(trunk, "num_classes", 0):
        raise ValueError(
            f"the trunk still has a {trunk.num_classes}-class head: call reset_classifier(0) first"
        )
    path = Path(path)
    buffer = _state_bytes({k: v.detach().cpu() for k, v in trunk.state_dict().items()})
    atomic_write_bytes(path, buffer)
    record = {
        "format": RECORD_FORMAT,
        "architecture": architecture,
        "in_channels": int(in_channels),
        "num_features": getattr(trunk, "num_features", None),
        "method": method,
        "epochs": epochs,
        "image_size": image_size,
        **details,
        "sources": list(sources),
        "weights_sha256": sha256_file(path),
        "image_sha256": sorted(set(image_sha256)),
    }
    atomic_write_json(backbone_record_path(path), record, indent=None)
    logger.info("backbone written to %s (%s, %d images)", path, method, len(record["image_sha256"]))
    return path


def _state_bytes(state: dict) -> bytes:
    import io

    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def read_backbone_record(weights_file: str | os.PathLike) -> dict | None:
    """The record of a backbone file (``backbone.json`` beside it), or None when it has none.

    A record whose ``weights_sha256`` is not the file's hash is an error (weights replaced after the run).
    """
    path = backbone_record_path(weights_file)
    if not path.is_file():
        return None
    record = _read_record(path)
    actual = sha256_file(weights_file)
    if record.get("weights_sha256") != actual:
        raise ValueError(
            f"{path} describes weights with SHA-256 {record.get('weights_sha256')}, but {weights_file} has "
            f"{actual}: the record belongs to other weights (re-run the pretraining, or remove the stale record)"
        )
    return record


def _read_record(path: Path) -> dict:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ValueError(f"backbone record {path} is not readable JSON: {err}") from err
    if not isinstance(record, dict) or not isinstance(record.get("image_sha256"), list):
        raise ValueError(f"backbone record {path} has no 'image_sha256' list of the images the backbone saw")
    return record


def _overlap(record: dict, datalist: dict, splits: Sequence[str]) -> list[str]:
    seen = set(record["image_sha256"])
    return [
        str(f)
        for split in splits
        for item in datalist.get(split, [])
        for f in _image_files(item["image"])
        if _hash(f) in seen
    ]


def _refuse(overlap: list[str], record_file: str, splits: Sequence[str], what: str) -> None:
    if overlap:
        shown = ", ".join(overlap[:3]) + (", ..." if len(overlap) > 3 else "")
        raise BackboneLeakageError(
            f"{what}: {len(overlap)} image(s) of the {'/'.join(splits)} split were seen by the pretrained "
            f"backbone ({record_file}): {shown}. Pretrain without them (pretrain_ssl --exclude <this datalist>) "
            "or evaluate on images the backbone never saw."
        )


def adopt_backbone(
    pretrained, ckpt_dir: str | os.PathLike, datalist: dict, eval_splits: Sequence[str] = EVAL_SPLITS
) -> dict | None:
    """At the start of classification training: check the backbone against the split, keep its record.

    ``pretrained`` is the bundle's ``pretrained`` value. When it is a file with a backbone record, an
    image of ``eval_splits`` that the backbone saw raises `BackboneLeakageError`, and the record is
    copied to ``<ckpt_dir>/pretrained_backbone.json`` for `check_evaluation`; otherwise a copy left
    by an earlier run is removed. Returns the record (None without one).
    """
    adopted = Path(ckpt_dir) / ADOPTED_NAME
    weights = Path(str(pretrained)).expanduser() if isinstance(pretrained, (str, os.PathLike)) else None
    record = read_backbone_record(weights) if weights is not None and weights.is_file() else None
    if record is None:
        adopted.unlink(missing_ok=True)
        return None
    _refuse(_overlap(record, datalist, eval_splits), str(weights), eval_splits, "refusing to train")
    atomic_write_json(adopted, {**record, "weights_file": str(weights.resolve())}, indent=None)
    logger.info(
        "backbone %s: no image of the %s split was seen in pretraining", weights, "/".join(eval_splits)
    )
    return record


def check_evaluation(ckpt_path: str | os.PathLike, datalist: dict, split: str) -> None:
    """Refuse an evaluation of ``split`` holding images the model's pretrained backbone saw.

    Reads ``pretrained_backbone.json`` beside ``ckpt_path`` (written by `adopt_backbone`); without it
    (no recorded backbone) there is nothing to check.
    """
    ckpt = Path(ckpt_path)
    adopted = (ckpt if ckpt.is_dir() else ckpt.parent) / ADOPTED_NAME
    if not adopted.is_file():
        return
    record = _read_record(adopted)
    _refuse(
        _overlap(record, datalist, [split]),
        record.get("weights_file", str(adopted)),
        [split],
        "refusing to evaluate",
    )


def export_classifier_backbone(
    ckpt_dir: str | os.PathLike,
    datalist_file: str | os.PathLike,
    out: str | os.PathLike | None = None,
    seen_splits: Sequence[str] = ("training", "validation"),
    epochs: int | None = None,
) -> Path:
    """Supervised pretraining: the trunk of a trained classifier (``model.pt`` + ``model_info.json`` in
    ``ckpt_dir``) as a backbone, recording the images of ``seen_splits`` (training, and validation,
    which chose the checkpoint) of the datalist it was trained on. Default ``out``: ``<ckpt_dir>/backbone.pt``.
    """
    from toolkit.bundle.description import load_model_info  # the bundle's own model description
    from toolkit.networks.weights import read_state_dict

    info = load_model_info(ckpt_dir)
    network = info.create_network()
    network.load_state_dict(read_state_dict(Path(ckpt_dir) / "model.pt"))
    if not hasattr(network, "reset_classifier"):
        raise ValueError(f"{info.network.get('name')!r}: only 2-D timm networks can be exported as backbones")
    network.reset_classifier(0)
    files = _datalist_images(Path(datalist_file), seen_splits)
    spec = json.loads(Path(datalist_file).read_text(encoding="utf-8")).get("split_spec") or {}
    return write_backbone(
        network,
        out or Path(ckpt_dir) / "backbone.pt",
        architecture=info.network["name"],
        in_channels=info.network.get("in_channels", 3),
        method="supervised",
        image_sha256=[_hash(f) for f in files],
        sources=[
            f"{spec.get('source', 'unknown source')} via {Path(datalist_file).resolve()} {list(seen_splits)}"
        ],
        epochs=epochs,
        image_size=info.preprocessing.get("image_size"),
        supervised_classes=info.class_names,
        **{k: info.preprocessing.get(k) for k in ("channels", "colour", "intensity")},
    )
