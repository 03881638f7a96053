"""Trained bundles as artifacts: a portable copy of the bundle, and the model in deployment formats.

:func:`pack_bundle` writes a self-contained bundle folder as the MONAI model zoo lays one out:
configs with the shared base expanded (no macro into this repository), ``bundle_root`` ``"."``
(MONAI Label, MONAI Deploy and ``--bundle_root`` set it, as for zoo bundles), the trained weights
with their ``model_info.json`` (and the ONNX exports made from them), and ``metadata.json`` whose
``network_data_format`` states the trained model's classes, channels and input size, so that
``verify_net_in_out`` and every consumer see the model that is there. The copy still needs this
package installed (``required_packages_version`` says so), since its configs name ``toolkit`` functions.

:func:`export_model` writes TorchScript (with the bundle's metadata and inference config inside,
what MONAI Deploy reads), ``torch.export`` (``.pt2``) or ONNX, and checks the exported model
against the eager one on real images before it returns; a difference above the tolerance is an
error and the file is removed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from monai.bundle import ConfigParser

from toolkit.bundle.backbone import ADOPTED_NAME
from toolkit.bundle.bf16_check import BF16_RECORD
from toolkit.bundle.configs import read_config
from toolkit.bundle.datalists import DATALIST_NAME
from toolkit.bundle.description import ModelInfo, info_path, load_model_info
from toolkit.bundle.loading import load_weights
from toolkit.data import find_image_files, load_datalist
from toolkit.evaluation.thresholds import THRESHOLDS_FILE
from toolkit.io import atomic_write_json, atomic_write_text, sha256_file

logger = logging.getLogger(__name__)

FORMATS = {"torchscript": "model.ts", "export": "model.pt2", "onnx": "model.onnx"}
ONNX_OPSET = 18
# largest |exported - eager| logit difference accepted (float32 on CPU; measured differences are ~1e-6)
TOLERANCE = 1e-4
CHECK_IMAGES = 4


class ExportMismatchError(RuntimeError):
    """An exported model does not reproduce the eager model within :data:`TOLERANCE`."""


def pack_bundle(
    bundle_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    ckpt_dir: str | os.PathLike | None = None,
    force: bool = False,
    base_url: str | None = None,
    eval_dir: str | os.PathLike | None = None,
) -> Path:
    """Write the portable copy of ``bundle_dir`` with the model trained into ``ckpt_dir`` to ``out_dir``.

    ``eval_dir``: the model's evaluation (default ``<ckpt_dir>/../output/eval``, the training run's),
    whose figures go into ``metadata.json``'s ``eval_metrics`` when they belong to this model.

    With ``base_url`` (where the site will publish the copy's files), ``large_files.yml`` lists the
    weights with that URL and their SHA-256, as model-zoo bundles do, so that a copy shipped without
    the weights gets them with ``cit fetch-weights`` / ``python -m monai.bundle download_large_files``.
    """
    bundle_dir = Path(bundle_dir).resolve()
    ckpt_dir = Path(ckpt_dir).resolve() if ckpt_dir else bundle_dir / "models"
    out_dir = Path(out_dir)
    info = load_model_info(ckpt_dir)  # fails clearly for an untrained bundle
    if not (ckpt_dir / "model.pt").is_file():
        raise FileNotFoundError(f"{ckpt_dir / 'model.pt'} is missing: train the bundle first")
    if out_dir.exists() and any(out_dir.iterdir()) and not force:
        raise FileExistsError(f"{out_dir} is not empty (pass force=True / --force to replace its files)")
    (out_dir / "configs").mkdir(parents=True, exist_ok=True)
    for config in sorted((bundle_dir / "configs").glob("*.json")):
        if config.name == "metadata.json":
            continue
        parser = ConfigParser(read_config(config, bundle_root=bundle_dir))
        parser.resolve_macro_and_relative_ids()
        expanded = parser.get()
        if "bundle_root" in expanded:
            expanded["bundle_root"] = "."
        if "study_model" in expanded:  # the copy describes the model it carries, not the study's default
            expanded["study_model"] = info.as_record()
        atomic_write_json(out_dir / "configs" / config.name, expanded)
    metadata = json.loads((bundle_dir / "configs" / "metadata.json").read_text())
    eval_dir = Path(eval_dir) if eval_dir else ckpt_dir.parent / "output" / "eval"
    evaluation = evaluation_of(info, ckpt_dir, eval_dir)
    atomic_write_json(out_dir / "configs" / "metadata.json", metadata_for(metadata, info, evaluation))
    for name in ("logging.conf",):
        if (bundle_dir / "configs" / name).is_file():
            shutil.copy2(bundle_dir / "configs" / name, out_dir / "configs" / name)
    for name in ("LICENSE", "large_files.yml"):
        if (bundle_dir / name).is_file():
            shutil.copy2(bundle_dir / name, out_dir / name)
    if (bundle_dir / "docs").is_dir():
        shutil.copytree(bundle_dir / "docs", out_dir / "docs", dirs_exist_ok=True)
    (out_dir / "models").mkdir(exist_ok=True)
    # the adopted backbone record goes along so the exported bundle keeps the evaluation's leakage guard
    names = (
        "model.pt",
        info_path(ckpt_dir).name,
        "temperature.json",
        THRESHOLDS_FILE,
        ADOPTED_NAME,
        BF16_RECORD,
    )
    for name in names:
        if (ckpt_dir / name).is_file():
            shutil.copy2(ckpt_dir / name, out_dir / "models" / name)
    _copy_current_exports(ckpt_dir, out_dir / "models")
    if base_url:
        write_large_files(out_dir, base_url)
    logger.info("packed %s with the model in %s into %s", bundle_dir.name, ckpt_dir, out_dir)
    return out_dir


def _copy_current_exports(ckpt_dir: Path, models_dir: Path) -> None:
    """The ONNX exports beside the weights (``model.onnx`` with its weights file, ``model.int8.onnx``) and
    their records, so that the copy's consumers run what ``cit infer`` runs; only those whose record names
    these very weights: a stale export stays behind (inference would refuse it)."""
    weights = sha256_file(ckpt_dir / "model.pt")
    for export in sorted(ckpt_dir.glob("*.onnx")):
        record = export_record_path(export)
        try:
            current = json.loads(record.read_text()).get("source_weights_sha256") == weights
        except (OSError, ValueError, AttributeError):  # no record, unreadable, or not a JSON object
            current = False
        if not current:
            logger.warning(
                "%s not packed: its record %s does not name these weights", export.name, record.name
            )
            continue
        for path in (export, record, *onnx_weight_files(export)):
            shutil.copy2(path, models_dir / path.name)


def onnx_weight_files(model_path: Path) -> list[Path]:
    """The files beside the ONNX model ``model_path`` that hold its weights (torch's exporter writes
    ``model.onnx.data``), as its tensors name them."""
    import onnx  # installed wherever an ONNX export was made (extra "export")
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    model = onnx.load(str(model_path), load_external_data=False)
    names = {ExternalDataInfo(t).location for t in model.graph.initializer if uses_external_data(t)}
    if any(Path(name).name != name for name in names):
        raise ValueError(f"{model_path} keeps weights outside its folder ({sorted(names)}): export it again")
    return [model_path.with_name(name) for name in sorted(names)]


def write_large_files(bundle_dir: str | os.PathLike, base_url: str) -> Path:
    """``large_files.yml`` for the weight files in ``bundle_dir/models`` (URL = ``base_url/models/<name>``).

    MONAI's format (``path``, ``url``, ``hash_val``, ``hash_type``); written as JSON-compatible YAML,
    which MONAI's config reader loads.
    """
    bundle_dir = Path(bundle_dir)
    entries = []
    for path in sorted((bundle_dir / "models").iterdir()):
        if path.suffix in (".pt", ".ts", ".pt2", ".onnx", ".data"):  # .data: an ONNX export's weights
            entries.append(
                {
                    "path": f"models/{path.name}",
                    "url": f"{base_url.rstrip('/')}/models/{path.name}",
                    "hash_val": sha256_file(path),
                    "hash_type": "sha256",
                }
            )
    lines = ["large_files:"]
    for entry in entries:
        lines.append(f"  - path: {json.dumps(entry['path'])}")
        lines += [f"    {key}: {json.dumps(entry[key])}" for key in ("url", "hash_val", "hash_type")]
    return atomic_write_text(bundle_dir / "large_files.yml", "\n".join(lines) + "\n")


def metadata_for(metadata: dict, info: ModelInfo, evaluation: dict | None = None) -> dict:
    """``metadata`` rewritten to describe the trained model, and nothing it is not: network, start
    (ImageNet / backbone / random), classes, channels, input size and preprocessing, the outputs, and
    ``eval_metrics`` when ``evaluation`` (its ``metrics.json``, see :func:`evaluation_of`) is given.
    The study's own text stays in docs/README.md; ``description`` says what was trained."""
    metadata = json.loads(json.dumps(metadata))
    fmt = metadata.setdefault("network_data_format", {})
    image = fmt.setdefault("inputs", {}).setdefault("image", {})
    prep = info.preprocessing
    channels = int(prep.get("channels", info.network.get("in_channels", 3)))
    size = prep["image_size"]  # a side (square / cube) or one number per axis
    dims = int(prep.get("spatial_dims", 2))
    shape = [int(s) for s in size] if isinstance(size, (list, tuple)) else [int(size)] * dims
    image.update(
        num_channels=channels, spatial_shape=shape, channel_def={str(i): "image" for i in range(channels)}
    )
    pred = fmt.setdefault("outputs", {}).setdefault("pred", {})
    names = ", ".join(f"{i} = {n}" for i, n in enumerate(info.class_names))
    pred.update(
        type="probabilities",
        num_channels=info.num_classes,
        channel_def={str(i): n for i, n in enumerate(info.class_names)},
    )
    start = info.start or {}
    if start.get("pretrained"):
        origin = f"fine-tuned from pretrained weights ({start.get('source')}, {start.get('tensors_loaded')} tensors)"
    elif start:
        origin = "trained from random initialisation"
    else:
        origin = "start not recorded (trained before the record kept it)"
    size_text = "x".join(str(s) for s in shape)
    metadata["description"] = (
        f"{info.network['name']} {'multi-label ' if info.multi_label else ''}classifier of {info.num_classes} "
        f"classes ({', '.join(info.class_names)}), {origin}, on {channels}-channel {size_text} inputs, with the "
        f"recipe of the {info.bundle_name or 'bundle'} bundle (docs/README.md). Exported by clinical-imaging-toolkit."
    )
    metadata["image_classes"] = (
        f"{channels}-channel {size_text} image, '{prep.get('intensity')}' intensity"
        + (
            f" (mean {prep['intensity_kwargs'].get('mean')}, std {prep['intensity_kwargs'].get('std')})"
            if (prep.get("intensity_kwargs") or {}).get("mean")
            else ""
        )
    )
    if info.multi_label:
        metadata["label_classes"] = f"one 0/1 label per finding: {names}"
        metadata["pred_classes"] = (
            f"{info.num_classes} probabilities, one per finding (sigmoid of the network's logits)"
        )
    else:
        metadata["label_classes"] = f"one class index per image: {names}"
        metadata["pred_classes"] = (
            f"{info.num_classes} class probabilities (softmax of the network's logits, temperature-scaled "
            "when models/temperature.json is present)"
        )
    metadata.pop("eval_metrics", None)
    if evaluation:
        metadata["eval_metrics"] = evaluation
    return metadata


def evaluation_of(info: ModelInfo, ckpt_dir: Path, eval_dir: Path) -> dict | None:
    """The figures of ``eval_dir/metrics.json`` for ``metadata.json``'s ``eval_metrics``, when they
    belong to the model in ``ckpt_dir``: same classes, written after its weights. Else None (and the
    exported metadata states no figure)."""
    path = eval_dir / "metrics.json"
    weights = ckpt_dir / "model.pt"
    if not path.is_file() or path.stat().st_mtime < weights.stat().st_mtime:
        return None
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return None
    if metrics.get("class_names") != info.class_names:
        return None
    auroc = metrics.get("roc_auc_macro", metrics.get("roc_auc_ovr_macro"))
    figures = {
        "split": metrics.get("split"),
        "num_samples": metrics.get("num_samples"),
        "accuracy": metrics.get("accuracy"),
        "macro_f1": (metrics.get("macro") or {}).get("f1"),
        "auroc_macro": auroc,
    }
    return {k: v for k, v in figures.items() if v is not None}


@dataclass
class ExportResult:
    path: Path
    max_abs_difference: float
    num_images: int


def export_model(
    bundle_dir: str | os.PathLike,
    fmt: str,
    out_path: str | os.PathLike | None = None,
    ckpt_dir: str | os.PathLike | None = None,
    check_inputs: str | os.PathLike | None = None,
    output_dir: str | os.PathLike | None = None,
) -> ExportResult:
    """Export the trained model of ``bundle_dir`` as ``fmt`` (see :data:`FORMATS`) and check it.

    The check runs the exported and the eager model on up to :data:`CHECK_IMAGES` real images,
    preprocessed as the model was validated: files under ``check_inputs``, else the test split the
    training run saved in ``output_dir`` (default ``<bundle>/output``).
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {sorted(FORMATS)}")
    bundle_dir = Path(bundle_dir).resolve()
    ckpt_dir = Path(ckpt_dir).resolve() if ckpt_dir else bundle_dir / "models"
    out_path = Path(out_path) if out_path else ckpt_dir / FORMATS[fmt]
    if out_path.suffix != Path(FORMATS[fmt]).suffix:  # MONAI and torch.export load files by their suffix
        raise ValueError(f"a {fmt} export is written to a '{Path(FORMATS[fmt]).suffix}' file, got {out_path}")
    info = load_model_info(ckpt_dir)
    network = info.create_network().eval()
    load_weights(network, ckpt_dir / "model.pt")
    images = _check_images(info, check_inputs, Path(output_dir) if output_dir else bundle_dir / "output")
    with torch.no_grad():
        eager = network(images)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    run = {"torchscript": _torchscript, "export": _torch_export, "onnx": _onnx}[fmt]
    exported = run(network, images, out_path, bundle_dir, ckpt_dir)
    difference = float((exported - eager).abs().max())
    if not difference <= TOLERANCE:
        out_path.unlink(missing_ok=True)
        raise ExportMismatchError(
            f"{fmt} export differs from the eager model by {difference:.2e} (> {TOLERANCE:g}) on "
            f"{len(images)} image(s); {out_path} was removed"
        )
    # which weights this export reproduces: `cit infer` uses an ONNX export only while they are unchanged
    record = {
        "format": fmt,
        "source_weights_sha256": sha256_file(ckpt_dir / "model.pt"),
        "max_abs_difference": difference,
        "tolerance": TOLERANCE,
        "num_check_images": len(images),
    }
    atomic_write_json(
        export_record_path(out_path), {**record, **({"onnx_opset": ONNX_OPSET} if fmt == "onnx" else {})}
    )
    logger.info(
        "%s written to %s; max |difference| to eager %.2e on %d image(s)",
        fmt,
        out_path,
        difference,
        len(images),
    )
    return ExportResult(out_path, difference, len(images))


def export_record_path(export_path: str | os.PathLike) -> Path:
    """The JSON record written beside an export (``model.onnx`` -> ``model.onnx.json``)."""
    return Path(f"{export_path}.json")


def _check_images(info: ModelInfo, check_inputs, output_dir: Path) -> torch.Tensor:
    if check_inputs:
        paths = [str(p) for p in find_image_files(check_inputs)][:CHECK_IMAGES]
    elif (output_dir / DATALIST_NAME).is_file():
        paths = [item["image"] for item in load_datalist(output_dir / DATALIST_NAME)["test"][:CHECK_IMAGES]]
    else:
        paths = []
    if not paths:
        raise FileNotFoundError(
            f"no real images to check the export on: pass check_inputs / --check-inputs, or keep the "
            f"training run's {output_dir / DATALIST_NAME}"
        )
    transform = info.preprocessing_transforms(label_key=None)
    images = [torch.as_tensor(transform({"image": p})["image"]).float() for p in paths]
    return torch.stack(
        images * 2 if len(images) == 1 else images
    )  # a batch of >= 2 keeps the batch size dynamic


def _torchscript(network, images, out_path: Path, bundle_dir: Path, ckpt_dir: Path) -> torch.Tensor:
    """TorchScript with ``metadata.json`` and ``inference.json`` inside, as MONAI's ``ckpt_export``
    writes it (MONAI Deploy's bundle operator reads both from the archive)."""
    from monai.data import save_net_with_metadata

    info = load_model_info(ckpt_dir)
    metadata = metadata_for(json.loads((bundle_dir / "configs" / "metadata.json").read_text()), info)
    parser = ConfigParser(read_config(bundle_dir / "configs" / "inference.json", bundle_root=bundle_dir))
    parser.resolve_macro_and_relative_ids()
    config = parser.get()
    config["bundle_root"] = "."
    scripted = torch.jit.trace(network, images[:1])
    save_net_with_metadata(
        scripted,
        str(out_path),
        include_config_vals=False,
        meta_values=metadata,
        more_extra_files={"inference.json": json.dumps(config).encode()},
    )
    loaded = torch.jit.load(str(out_path))
    with torch.no_grad():
        return loaded(images)


def _torch_export(network, images, out_path: Path, *_) -> torch.Tensor:
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(network, (images,), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(out_path))
    loaded = torch.export.load(str(out_path)).module()
    with torch.no_grad():
        return loaded(images)


def _onnx(network, images, out_path: Path, *_) -> torch.Tensor:
    import onnxruntime  # optional dependency (extra "export"), needed only for this format

    batch = torch.export.Dim("batch")
    with contextlib.redirect_stdout(sys.stderr):  # the exporter prints its progress; stdout is the caller's
        torch.onnx.export(
            network,
            (images,),
            str(out_path),
            input_names=["image"],
            output_names=["logits"],
            opset_version=ONNX_OPSET,
            dynamic_shapes=({0: batch},),
            dynamo=True,
        )
    session = onnxruntime.InferenceSession(str(out_path), providers=["CPUExecutionProvider"])
    return torch.as_tensor(session.run(None, {"image": images.numpy()})[0])
