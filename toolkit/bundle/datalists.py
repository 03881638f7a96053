"""One split per run: training writes the datalist once, evaluation and inference read that file.

Training calls :func:`datalist_for`, which builds the split into ``<output_dir>/datalist.json``
together with a *split spec* (the source and every rule that decides which image lands in which
split) and its fingerprint. Evaluation calls :func:`saved_datalist`, which reads that file and
refuses, in one line naming both fingerprints, when the caller asks for a split that differs
(another seed, ratios, source...). Rebuilding the split from a copy of the rules in each config
is what let a training image leak into an evaluation before.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch.distributed

from toolkit.data import (
    build_datalist,
    find_image_files,
    load_datalist,
    make_synthetic_dataset,
    save_datalist,
)
from toolkit.data.datalist import split_keys
from toolkit.data.sources.registry import given_options, recorded_options
from toolkit.engines import is_distributed, process_rank

logger = logging.getLogger(__name__)

DATALIST_NAME = "datalist.json"
# split-spec keys an evaluation may state explicitly; each must equal what training recorded
CHECKED_KEYS = (
    "source",
    "seed",
    "ratios",
    "val_fraction",
    "classes",
    "label_from_name",
    "patient_from_name",
    "group_near_duplicates",
)


class SplitMismatchError(ValueError):
    """An evaluation asked for a different split than the one its model was trained on."""


def fingerprint(spec: dict) -> str:
    """Short SHA-256 of a split spec in canonical JSON (sorted keys)."""
    text = json.dumps(spec, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def split_spec(
    dataset_dir: str | os.PathLike | None,
    seed: int = 0,
    ratios: Any = None,
    val_fraction: float = 0.15,
    classes: list[str] | None = None,
    label_from_name: str | None = None,
    patient_from_name: str | None = None,
    group_near_duplicates: bool | dict = False,
    **source_options: Any,
) -> dict:
    """What decides the split. A datalist JSON source is identified by its content hash as well.

    ``source_options``: how the source is read (the options of ``toolkit.data.sources.registry``
    other than the rules above: a label file's columns, ``skip_missing`` ..., a registered source's
    own); only those given are part of the spec, so a spec without them keeps its fingerprint. So is
    ``group_near_duplicates`` (True or the audit thresholds it uses), only when set.
    """
    source = str(Path(dataset_dir).expanduser().resolve()) if dataset_dir else "synthetic"
    spec = {
        "source": source,
        "seed": int(seed),
        "ratios": ratios,
        "val_fraction": val_fraction,
        "classes": list(classes) if classes else None,
        "label_from_name": label_from_name,
        "patient_from_name": patient_from_name,
    }
    recorded = recorded_options()
    unknown = set(source_options) - set(recorded)
    if unknown:
        raise TypeError(f"unknown split option(s) {sorted(unknown)}; known: {list(recorded)}")
    spec.update({k: source_options[k] for k in recorded if source_options.get(k)})
    if group_near_duplicates:
        spec["group_near_duplicates"] = group_near_duplicates
        if _embedder_wanted(
            group_near_duplicates
        ):  # the rule changed (issue 22): splits grouped before are rebuilt
            spec["near_duplicate_rule"] = "hash+embedding-keypoints-1"
    if source.endswith(".json") and Path(source).is_file():
        spec["source_sha256"] = hashlib.sha256(Path(source).read_bytes()).hexdigest()
    return spec


def datalist_for(
    dataset_dir: str | os.PathLike | None,
    output_dir: str | os.PathLike,
    seed: int = 0,
    ratios: Any = None,
    val_fraction: float = 0.15,
    classes: list[str] | None = None,
    label_from_name: str | None = None,
    patient_from_name: str | None = None,
    synthetic: dict | None = None,
    group_near_duplicates: bool | dict = False,
    **source_options: Any,
) -> str:
    """Build the training run's split into ``<output_dir>/datalist.json`` and return its path.

    ``dataset_dir`` is anything ``toolkit.data.build_datalist`` takes; empty means the synthetic
    demo data (``synthetic``: keyword arguments of ``make_synthetic_dataset``), written under
    ``<output_dir>/synthetic_data``. When the file already holds the split of the same spec it is
    kept as it is; a different spec replaces it (a new training run), which is logged.
    ``source_options`` (``image_column`` ... ``allow_single_class``: the fields of
    ``toolkit.data.sources.registry.SourceOptions`` or of a registered source's options) are passed
    to ``build_datalist`` (how the source is read; not used for the synthetic data) and, when given,
    are part of the split spec.
    ``group_near_duplicates`` (True, or the audit's thresholds as a dict, e.g.
    ``{"confirm_pixels": 0.35}``) keeps patients and clusters of duplicate / near-duplicate images
    (found as `cit audit` finds them) in one split each; see ``toolkit.data.build_datalist`` (not
    used for the synthetic data, which comes split by its synthetic patients).
    Under torchrun, rank 0 builds the split while the other ranks wait, then all read that file.
    """
    given_options(source_options, "datalist_for()")
    options = dict(
        seed=seed,
        ratios=ratios,
        val_fraction=val_fraction,
        classes=classes,
        label_from_name=label_from_name,
        patient_from_name=patient_from_name,
        synthetic=synthetic,
        group_near_duplicates=group_near_duplicates,
        source_options=source_options,
    )
    if not is_distributed():
        return _build_split(dataset_dir, output_dir, **options)
    path = _build_split(dataset_dir, output_dir, **options) if process_rank() == 0 else None
    torch.distributed.barrier()
    return path or str(Path(output_dir) / DATALIST_NAME)


def _build_split(
    dataset_dir,
    output_dir,
    seed,
    ratios,
    val_fraction,
    classes,
    label_from_name,
    patient_from_name,
    synthetic,
    group_near_duplicates,
    source_options,
) -> str:
    source_opts = dict(source_options) if dataset_dir else {}
    group_near_duplicates = (
        group_near_duplicates if dataset_dir else False
    )  # synthetic: split by its patients
    output_dir = Path(output_dir)
    target = output_dir / DATALIST_NAME
    source = dataset_dir
    if not source:
        options = {k: v for k, v in (synthetic or {}).items() if v is not None}
        source = make_synthetic_dataset(output_dir / "synthetic_data", seed=seed, **options)
    spec = split_spec(
        source if dataset_dir else None,
        seed,
        ratios,
        val_fraction,
        classes,
        label_from_name,
        patient_from_name,
        group_near_duplicates,
        **source_opts,
    )
    if not dataset_dir:
        spec["synthetic"] = {k: v for k, v in (synthetic or {}).items() if v is not None}
    fp = fingerprint(spec)
    if target.is_file():
        saved = read_json_object(target)
        if saved.get("split_fingerprint") == fp:
            logger.info("using the split in %s (fingerprint %s)", target, fp)
            return str(target)
        logger.warning(
            "replacing the split in %s (fingerprint %s) with a new one (fingerprint %s)",
            target,
            saved.get("split_fingerprint"),
            fp,
        )
    built = Path(
        build_datalist(
            source,
            target,
            ratios=ratios,
            val_fraction=val_fraction,
            seed=seed,
            classes=classes,
            label_from_name=label_from_name,
            patient_from_name=patient_from_name,
            **source_opts,
            grouper=_grouper(group_near_duplicates),
        )
    )
    doc = load_datalist(built)  # a JSON source is returned as is: copy it, with absolute image paths
    meta = {k: v for k, v in doc.items() if k not in split_keys(doc) and k not in ("labels", "multi_label")}
    meta.update(split_spec=spec, split_fingerprint=fp)
    save_datalist(
        target, {k: doc[k] for k in split_keys(doc)}, doc["labels"], doc.get("multi_label", False), **meta
    )
    logger.info("split written to %s (fingerprint %s)", target, fp)
    return str(target)


def saved_datalist(
    output_dir: str | os.PathLike, datalist_file: str | None = None, model_info=None, **requested
) -> dict:
    """The datalist training wrote in ``output_dir`` (or ``datalist_file``), checked against ``requested``.

    ``requested`` holds split-spec values the caller states explicitly (``dataset_dir``, ``seed``,
    ``ratios``...; ``None`` = "as trained"). Any that differ from the recorded spec raise
    :class:`SplitMismatchError` naming both fingerprints, and so does a split other than the one
    ``model_info`` (a :class:`~toolkit.bundle.description.ModelInfo`) was trained on. An explicit
    ``datalist_file`` (e.g. an external test set made with `cit datalist`) is used as it is.
    """
    if datalist_file:
        return load_datalist(datalist_file)
    path = Path(output_dir) / DATALIST_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"no split to evaluate: {path} is missing (train the bundle with this output_dir first, "
            "or pass --datalist_file with a datalist made by `cit datalist`)"
        )
    doc = load_datalist(path)
    trained_on = getattr(model_info, "split_fingerprint", None)
    if trained_on and doc.get("split_fingerprint") != trained_on:
        raise SplitMismatchError(
            f"the model was trained on split {trained_on}, but {path} now holds split "
            f"{doc.get('split_fingerprint')} (another training run wrote it): evaluate with that run's "
            "models/ folder, or train again"
        )
    saved = doc.get("split_spec")
    if saved is None:
        return doc  # written by an older version or by hand: nothing to compare with
    asked = dict(saved)
    if requested.get("dataset_dir"):
        requested["source"] = str(Path(requested.pop("dataset_dir")).expanduser().resolve())
    requested.pop("dataset_dir", None)
    for key, value in requested.items():
        if value is not None and key in CHECKED_KEYS:
            asked[key] = value
    differing = [k for k in CHECKED_KEYS if _normal(asked.get(k)) != _normal(saved.get(k))]
    if differing:
        raise SplitMismatchError(
            f"{path} holds the split of the training run (fingerprint {doc.get('split_fingerprint')}); "
            f"this run asks for another one (fingerprint {fingerprint(asked)}): "
            + ", ".join(f"{k} {saved.get(k)!r} -> {asked.get(k)!r}" for k in differing)
            + ". Evaluate with the training split (drop these options), or train again."
        )
    return doc


def source_folder(output_dir: str | os.PathLike) -> str:
    """The folder the run's images came from (the default input of a bundle's inference run)."""
    spec = read_json_object(Path(output_dir) / DATALIST_NAME).get("split_spec") or {}
    source = spec.get("source")
    if source == "synthetic" or not source:
        return str(Path(output_dir) / "synthetic_data")
    return str(Path(source).parent if Path(source).is_file() else Path(source))


def inference_records(input_dir: str | os.PathLike) -> list[dict]:
    """One ``{"image": path}`` record per image file below ``input_dir``; none is an error that names
    the folder and the option to change it."""
    records = [{"image": str(p)} for p in find_image_files(input_dir)] if Path(input_dir).is_dir() else []
    if not records:
        raise FileNotFoundError(f"no image files in {input_dir}: pass --dataset_dir <folder of images>")
    return records


def _embedder_wanted(group_near_duplicates) -> bool:
    return isinstance(group_near_duplicates, dict) and bool(group_near_duplicates.get("embeddings", False))


def _grouper(group_near_duplicates):
    """The split's near-duplicate grouping (``toolkit.data.audit.near_duplicate_grouper``) for a bundle's
    ``group_near_duplicates`` (True, or the audit's settings), with the audit's embedder when the
    settings ask for its embedding stage (``{"embeddings": true}``); None when not asked for."""
    if not group_near_duplicates:
        return None
    from toolkit.data.audit import near_duplicate_grouper  # imagehash + Pillow: only for a grouped split

    options = dict(group_near_duplicates) if isinstance(group_near_duplicates, dict) else {}
    embedder = None
    if _embedder_wanted(group_near_duplicates):
        from toolkit.networks.embeddings import ImageEmbedder  # torch + timm: only for the embedding stage

        embedder = ImageEmbedder()
    return near_duplicate_grouper(read_pixels, embedder=embedder, **options)


def read_pixels(path: str):
    """Pixels of one image as the toolkit's transforms read it (a multi-frame DICOM: its middle
    frame), for the near-duplicate grouping; ``ImageReadError`` (a ValueError) naming a bad file."""
    from toolkit.transforms.readers import MedicalImageReader  # torch + MONAI: only when images are read

    reader = MedicalImageReader(dicom_frame="middle")
    return reader.get_data(reader.read(path))[0]


def read_json_object(path: Path) -> dict:
    """A JSON file's top-level object, or ``{}`` when it is missing or not a JSON object."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _normal(value):
    """Compare JSON values as JSON does (tuples as lists, ints equal to floats)."""
    return json.loads(json.dumps(value, sort_keys=True, default=str)) if value is not None else None
