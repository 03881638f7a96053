"""Reproducible experiments: each file under ``configs/experiments/`` is trained and evaluated with
the project's own bundles, and summarised for ``docs/results.md`` (``scripts/reproduce_results.py``).

Two kinds of experiment file:

- ``"kind": "pretrain"``: a `pretrain_ssl` run over folders of the shared data, leaving out the
  test images of the experiments in ``exclude_test_of``; it writes ``<out>/<name>/models/backbone.pt``,
  which classification experiments name as ``"{backbone:<name>}"`` in an override.
- ``"kind": "classification"``: one data set (``data``: a source under the shared data folder and
  the ``cit datalist`` options), one bundle with common ``overrides``, one or more ``arms`` (e.g.
  scratch vs a pretrained backbone), ``label_fractions`` of the training labels and ``seeds``.
  Every (fraction, seed) is one ``cit compare`` run of the arms (``toolkit.studies.compare``): one
  saved split, the same test set, CIs by (patient) bootstrap and paired tests between the arms.
  Optional ``time_to_accuracy`` (``fraction``, ``seeds``, ``targets``: test accuracies to reach):
  those runs keep every epoch's checkpoint, each tested after training (:func:`accuracy_per_epoch`).
  Multi-label test sets are scored on the findings :func:`scored_findings` keeps (mean AUROC over
  them, each model at its own validation-chosen thresholds); exact-match accuracy is not shown.

Nothing here looks at a test image to choose anything: the split is the published one or made by
``datalist_for``; a label fraction is a seeded, stratified, patient-grouped subset of the
training split only (validation, which selects the checkpoint, and test are kept whole).
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import re
import shlex
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from toolkit.bundle.datalists import datalist_for, read_json_object
from toolkit.data import load_datalist, save_datalist, split_items
from toolkit.evaluation.compare import ComparisonSet, align_predictions, compare_predictions
from toolkit.evaluation.report import read_predictions
from toolkit.io import atomic_write_json, sha256_file
from toolkit.studies.compare import (
    ModelSpec,
    bundle_command,
    compare_bundles,
    eval_overrides,
    model_threshold,
    parse_overrides,
    recipe_digest,
)
from toolkit.studies.runs import error_line, run_logged

logger = logging.getLogger(__name__)

# experiments, like the bundles they run, live in the source tree (not in an installed package)
REPO_ROOT = Path(__file__).resolve().parents[2]
EXPERIMENTS_DIR = REPO_ROOT / "configs" / "experiments"
BACKBONE = re.compile(r"\{backbone:([A-Za-z0-9_-]+)\}")


def shared_data_dir() -> Path:
    """``$CIT_SHARED_DATA``, else ``../shared/data`` beside the project root."""
    return Path(os.environ.get("CIT_SHARED_DATA") or REPO_ROOT.parent / "shared" / "data").resolve()


def load_experiments(names: Sequence[str] = ()) -> dict[str, dict]:
    """``{name: spec}`` of ``configs/experiments/*.json`` (all, or ``names``), pretraining first."""
    found = {p.stem: p for p in sorted(EXPERIMENTS_DIR.glob("*.json"))}
    unknown = [n for n in names if n not in found]
    if unknown:
        raise ValueError(f"no experiment {unknown} under {EXPERIMENTS_DIR} (known: {', '.join(found)})")
    specs = {n: json.loads(found[n].read_text(encoding="utf-8")) for n in (names or found)}
    for name, spec in specs.items():
        if spec.get("kind") not in ("pretrain", "classification"):
            raise ValueError(f"{found[name]}: 'kind' must be 'pretrain' or 'classification'")
    return dict(sorted(specs.items(), key=lambda kv: kv[1]["kind"] != "pretrain"))


def _cli_pairs(overrides: Mapping[str, object]) -> list[str]:
    out = []
    for key, value in overrides.items():
        out += [f"--{key}", value if isinstance(value, str) else json.dumps(value)]
    return out


def backbone_path(out_dir: Path, name: str) -> Path:
    return out_dir / name / "models" / "backbone.pt"


def _fill_backbones(value: str, out_dir: Path) -> str:
    """``"{backbone:ssl_pool}"`` -> the path of that pretraining experiment's backbone."""

    def path(match: re.Match) -> str:
        found = backbone_path(out_dir, match.group(1))
        if not found.is_file():
            raise FileNotFoundError(
                f"{found} does not exist: run the pretraining experiment {match.group(1)!r} first"
            )
        return str(found)

    return BACKBONE.sub(path, value)


# ---------------------------------------------------------------------------------------------
# Pretraining


def run_pretrain(name: str, spec: dict, out_dir: Path, data_dir: Path) -> dict:
    """Run the pretraining bundle unless the same command already wrote its backbone."""
    run_dir = out_dir / name
    sources = [str(data_dir / s) for s in spec["sources"]]
    bundle = REPO_ROOT / "bundles" / spec.get("bundle", "pretrain_ssl")
    ids = {
        "dataset_dir": json.dumps(sources),
        "ckpt_dir": str(run_dir / "models"),
        "output_dir": str(run_dir / "output"),
    }
    command = bundle_command(
        "training", bundle / "configs" / "train.json", bundle, ids, _cli_pairs(spec.get("overrides", {}))
    )
    targets = load_experiments(spec.get("exclude_test_of", []))
    excluded = [str(experiment_datalist(n, t, out_dir, data_dir)) for n, t in targets.items()]
    if excluded:  # their test images are left out of the pool (the leakage guard checks it again)
        command += ["--exclude", json.dumps(excluded)]
    record = read_json_object(run_dir / "run.json")
    recipe = recipe_digest(bundle)
    if (
        record.get("command") == command
        and record.get("recipe") == recipe
        and record.get("returncode") == 0
        and backbone_path(out_dir, name).is_file()
    ):
        logger.info("%s: backbone of an identical earlier run kept (%s)", name, backbone_path(out_dir, name))
        return record
    start = time.monotonic()
    code = run_logged(command, REPO_ROOT, run_dir / "train.log")
    record = {
        "command": command,
        "recipe": recipe,
        "returncode": code,
        "seconds": round(time.monotonic() - start, 1),
    }
    atomic_write_json(run_dir / "run.json", record)
    if code != 0:
        raise RuntimeError(f"pretraining {name} failed: {error_line((run_dir / 'train.log').read_text())}")
    return record


# ---------------------------------------------------------------------------------------------
# Data


def rebuild_pneumoniamnist(data_dir: Path, out_path: Path) -> Path:
    """The official PneumoniaMNIST split from the two partial copies in ``medmnist/`` (see the shared
    data README): the balanced copy holds every official training normal, the other copy every
    training pneumonia and the official validation / test sets. Training images are the union of
    both copies' training sets, de-duplicated on their bytes; a pixel-identical image with two
    labels is an error. Our own step (no MedMNIST tool rebuilds a split from partial copies)."""
    balanced = np.load(data_dir / "medmnist" / "pneumoniamnist_balanced_subset.npz")
    full_eval = np.load(data_dir / "medmnist" / "pneumoniamnist_normal_subsampled_train.npz")
    seen: dict[bytes, int] = {}
    images, labels = [], []
    for source in (balanced, full_eval):
        for image, label in zip(
            source["train_images"], np.asarray(source["train_labels"]).reshape(-1), strict=True
        ):
            key = hashlib.sha256(np.ascontiguousarray(image).tobytes()).digest()
            if key in seen:
                if seen[key] != int(label):
                    raise ValueError("the PneumoniaMNIST copies give one training image two labels")
                continue
            seen[key] = int(label)
            images.append(image)
            labels.append(int(label))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        out_path,
        train_images=np.stack(images),
        train_labels=np.array(labels),
        val_images=full_eval["val_images"],
        val_labels=np.asarray(full_eval["val_labels"]).reshape(-1),
        test_images=full_eval["test_images"],
        test_labels=np.asarray(full_eval["test_labels"]).reshape(-1),
    )
    return out_path


PREPARE = {
    "pneumoniamnist": lambda data_dir, out: rebuild_pneumoniamnist(data_dir, out / "pneumoniamnist.npz")
}


def experiment_datalist(name: str, spec: dict, out_dir: Path, data_dir: Path) -> Path:
    """The experiment's one split (``<out>/<name>/datalist.json``), built once by ``datalist_for``."""
    options = dict(spec["data"])
    prepare = options.pop("prepare", None)
    source = options.pop("source")
    if prepare:
        source_path = PREPARE[prepare](data_dir, out_dir / "data")
    else:
        source_path = data_dir / source
    if not source_path.exists():
        raise FileNotFoundError(f"{name}: data not found: {source_path} (set CIT_SHARED_DATA)")
    return Path(datalist_for(source_path, out_dir / name, seed=0, **options))


def label_fraction(datalist: Path, fraction: float, seed: int, out_path: Path) -> Path:
    """A copy of ``datalist`` whose training split keeps ``fraction`` of the images (stratified,
    patient-grouped, seeded); validation and test are kept whole. ``fraction == 1``: ``datalist``."""
    if fraction >= 1:
        return datalist
    doc = load_datalist(datalist)
    kept = split_items(doc["training"], {"keep": fraction, "drop": 1 - fraction}, seed=seed)["keep"]
    splits = {k: doc[k] for k in ("validation", "test") if k in doc}
    return save_datalist(
        out_path,
        {"training": kept, **splits},
        doc["labels"],
        multi_label=doc.get("multi_label", False),
        subset_of=str(datalist),
        training_fraction=fraction,
        seed=seed,
    )


# ---------------------------------------------------------------------------------------------
# Classification experiments


def _interval(node: Mapping | None) -> list[float | None]:
    node = node or {}
    return [node.get("low"), node.get("high")]


def _arm_metrics(model: Mapping, positive: str | None, multi_label: bool = False) -> dict:
    """Accuracy, AUROC (and sensitivity / specificity for a binary task) with their CIs; no accuracy
    for a multi-label task (exact match of every finding says little and no published row uses it)."""
    row = {
        "accuracy": model["metrics"]["accuracy"],
        "accuracy_ci": _interval(model["intervals"]["accuracy"]),
        "auroc": model["metrics"]["auroc"],
        "auroc_ci": _interval(model["intervals"]["auroc"]),
    }
    if multi_label:
        row["accuracy"], row["accuracy_ci"] = None, [None, None]
        return row
    full = model["full"]
    names = list(full["per_class"])
    if positive is not None and positive not in names:
        raise ValueError(f"the experiment's positive class {positive!r} is not one of its classes {names}")
    if positive is not None and len(names) == 2:
        negative = next(n for n in names if n != positive)
        for metric, cls in (("sensitivity", positive), ("specificity", negative)):
            row[metric] = full["per_class"][cls]["recall"]
            row[metric + "_ci"] = _interval(full["confidence_intervals"]["per_class"][cls]["recall"])
    return row


def _paired(result: Mapping) -> dict:
    """The paired tests of the best arm against the others (accuracy: McNemar; AUROC: DeLong or bootstrap)."""
    out = {"reference": result["reference"]}
    for name, comparison in result["comparisons"].items():
        out[name] = {
            m: {
                "difference": comparison[m]["difference"],
                "p": comparison[m]["p_value"],
                "test": comparison[m]["test"],
            }
            for m in ("accuracy", "auroc")
        }
    return out


MIN_POSITIVES = 5


def scored_findings(y_true: np.ndarray, min_positives: int = MIN_POSITIVES) -> np.ndarray:
    """Which findings of a multi-label test set (``y_true``: images x findings, 0 / 1) are scored: those
    with at least ``min_positives`` positive and as many negative images. With fewer, a finding's AUROC
    is undefined in many bootstrap resamples and rests on a handful of images (a small subset's rare
    findings: ChestX-ray14's Hernia has 1 test image in 188)."""
    positives = np.asarray(y_true).sum(axis=0)
    return (positives >= min_positives) & (len(y_true) - positives >= min_positives)


def _multi_label_result(eval_dirs: Mapping[str, Path], seed: int) -> tuple[dict, list[str]]:
    """The arms compared on the scored findings only (:func:`scored_findings`), each at its own
    thresholds chosen on validation; also the names of the findings left out."""
    predictions = {n: read_predictions(d / "predictions.csv") for n, d in eval_dirs.items()}
    test, probs = align_predictions(predictions)
    keep = scored_findings(test.y_true)
    if not keep.any():  # a test set too small for the rule: every finding, with AUROC n/a where undefined
        logger.warning(
            "no finding has %d positive and %d negative test images: all are scored",
            MIN_POSITIVES,
            MIN_POSITIVES,
        )
        keep = np.ones(len(test.class_names), dtype=bool)
    scored = [c for c, k in zip(test.class_names, keep, strict=True) if k]
    subset = ComparisonSet(test.images, test.groups, test.y_true[:, keep], scored, True)
    own = {}
    for name, pred in predictions.items():
        used = model_threshold(pred, 0.5)
        own[name] = used if isinstance(used, float) else np.asarray(used)[keep]
    result = compare_predictions(subset, {n: p[:, keep] for n, p in probs.items()}, own, seed=seed)
    return result, [c for c in test.class_names if c not in scored]


def _subset_rows(predictions_csv: Path, spec: Mapping, data_dir: Path) -> set[str]:
    """Images of a test subset: every row whose file is not flagged by ``drop_where`` in ``csv``."""
    with open(data_dir / spec["csv"], newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    dropped = {
        r[spec["file_column"]] for r in rows if all(r.get(k) == v for k, v in spec["drop_where"].items())
    }
    images = read_predictions(predictions_csv).images
    return {i for i in images if not any(i.replace(os.sep, "/").endswith("/" + d) for d in dropped)}


def _subset_result(eval_dirs: Mapping[str, Path], keep: set[str], seed: int) -> dict:
    test, probs = align_predictions(
        {n: read_predictions(d / "predictions.csv") for n, d in eval_dirs.items()}
    )
    rows = np.array([i for i, image in enumerate(test.images) if image in keep])
    subset = ComparisonSet(
        [test.images[i] for i in rows],
        None if test.groups is None else [test.groups[i] for i in rows],
        test.y_true[rows],
        test.class_names,
        test.multi_label,
    )
    return compare_predictions(subset, {n: p[rows] for n, p in probs.items()}, seed=seed)


def run_classification(
    name: str, spec: dict, out_dir: Path, data_dir: Path, only_arms: Sequence[str] = ()
) -> dict:
    """Every (label fraction, seed) of one experiment as a comparison of its arms; returns the summary
    that ``docs/results.md`` is written from (also saved as ``<out>/<name>/summary.json``).
    ``only_arms``: run just these now (e.g. the arms that need no backbone, while it is pretrained);
    a later full run reuses their training."""
    unknown = set(only_arms) - set(spec["arms"])
    if unknown:
        raise ValueError(f"{name}: no arm {sorted(unknown)} (arms: {', '.join(spec['arms'])})")
    datalist = experiment_datalist(name, spec, out_dir, data_dir)
    bundle = REPO_ROOT / "bundles" / spec["bundle"]
    common = _cli_pairs(spec.get("overrides", {}))
    positive = spec.get("positive")
    runs = []
    for fraction in spec.get("label_fractions", [1.0]):
        for seed in spec.get("seeds", [0]):
            tag = f"labels{round(fraction * 100)}_seed{seed}"
            run_dir = out_dir / name / tag
            subset = label_fraction(datalist, fraction, seed, run_dir / "labels.json")
            arms = [
                ModelSpec(
                    arm,
                    bundle,
                    overrides=parse_overrides(
                        [_fill_backbones(str(v), out_dir) for v in _cli_pairs(overrides)]
                    ),
                )
                for arm, overrides in spec["arms"].items()
                if not only_arms or arm in only_arms
            ]
            timed = _timed(spec, fraction, seed)
            logger.info("%s: %s (%s)", name, tag, ", ".join(spec["arms"]))
            extra = ["--seed", str(seed), *(["--checkpoints_kept", "0"] if timed else [])]
            summary = compare_bundles(arms, subset, run_dir, seed=0, overrides=[*common, *extra], reuse=True)
            result = summary["comparison"]
            ok = {r["name"]: Path(r["eval_dir"]) for r in summary["rows"] if r["status"] == "ok"}
            multi_label = bool(result and result["test_set"]["multi_label"])
            left_out = None
            if multi_label:
                result, left_out = _multi_label_result(ok, seed=0)
            entry = {
                "fraction": fraction,
                "seed": seed,
                "folder": _shown(run_dir),
                "arms": {},
                "paired": None,
            }
            histories = {}  # training_history.csv rows per arm, read once
            for row in summary["rows"]:
                arm = {"status": row["status"], "train_seconds": row["seconds"].get("training")}
                if row["status"] == "ok":
                    arm.update(_arm_metrics(result["models"][row["name"]], positive, multi_label))
                    histories[row["name"]] = _history(Path(row["ckpt_dir"]))
                    arm["epochs"], arm["train_cpu_seconds"] = _epochs(histories[row["name"]])
                    arm["weights_sha256"] = sha256_file(Path(row["ckpt_dir"]) / "model.pt")
                else:
                    arm["error"] = row.get("error")
                entry["arms"][row["name"]] = arm
            if result is not None and len(result["models"]) > 1:
                entry["paired"] = _paired(result)
            doc = load_datalist(subset)
            entry["images"] = {k: len(doc[k]) for k in ("training", "validation", "test") if k in doc}
            if left_out is not None:
                entry["findings_left_out"] = left_out
            entry["subsets"] = {}
            for label, subset_spec in spec.get("test_subsets", {}).items():
                if not ok:
                    continue
                keep = _subset_rows(next(iter(ok.values())) / "predictions.csv", subset_spec, data_dir)
                sub = _subset_result(ok, keep, seed=0)
                entry["subsets"][label] = {
                    "images": len(keep),
                    "arms": {n: _arm_metrics(m, positive) for n, m in sub["models"].items()},
                }
            if timed:
                entry["time_to_accuracy"] = {
                    r["name"]: accuracy_per_epoch(
                        bundle, Path(r["ckpt_dir"]), histories[r["name"]], [*common, *extra]
                    )
                    for r in summary["rows"]
                    if r["status"] == "ok"
                }
            runs.append(entry)
    out = {"name": name, "spec": spec, "datalist": _shown(datalist), "runs": runs}
    atomic_write_json(out_dir / name / "summary.json", out)
    return out


def _shown(path: Path) -> str:
    """A path as the docs show it: relative to the repository when inside it."""
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)


def _timed(spec: Mapping, fraction: float, seed: int) -> bool:
    timed = spec.get("time_to_accuracy")
    return bool(timed) and timed.get("fraction", 1.0) == fraction and seed in timed.get("seeds", [0])


def accuracy_per_epoch(bundle: Path, ckpt_dir: Path, history: list[dict], overrides: list[str]) -> list[dict]:
    """Test accuracy of every epoch's checkpoint, evaluated after training (it never stopped or
    selected anything), beside the cumulative training CPU time up to that epoch (``epoch_cpu_seconds``
    of ``history``, the run's training_history.csv rows: the epochs' iterations, without validation).
    Each checkpoint is evaluated with the bundle's evaluate.json, as a user would, then deleted (a
    full-state checkpoint per epoch is hundreds of MB); the evaluation's metrics.json stays, so a
    repeated call needs no checkpoint."""
    config = bundle / "configs" / "evaluate.json"
    rows, elapsed = [], 0.0
    for row in history:
        epoch = int(row["epoch"])
        elapsed += float(row.get("epoch_cpu_seconds") or "nan")
        eval_dir = ckpt_dir.parent / "epochs" / f"epoch{epoch}"
        checkpoint = ckpt_dir / f"checkpoint_epoch={epoch}.pt"
        if not (eval_dir / "metrics.json").is_file() and checkpoint.is_file():
            ids = {
                "ckpt_dir": str(ckpt_dir),
                "ckpt_path": str(checkpoint),
                "eval_dir": str(eval_dir),
                "output_dir": str(ckpt_dir.parent / "output"),
            }
            command = bundle_command("evaluating", config, bundle, ids, eval_overrides(config, overrides))
            if run_logged(command, REPO_ROOT, eval_dir.parent / f"evaluate{epoch}.log") != 0:
                logger.warning(
                    "evaluation of %s failed: see %s", checkpoint, eval_dir.parent / f"evaluate{epoch}.log"
                )
        if epoch < len(history):
            checkpoint.unlink(missing_ok=True)
        metrics = read_json_object(eval_dir / "metrics.json")
        rows.append(
            {
                "epoch": epoch,
                "train_cpu_minutes": round(elapsed / 60, 2),
                "accuracy": metrics.get("accuracy"),
                "auroc": metrics.get("roc_auc_ovr_macro"),
            }
        )
    return rows


def _history(ckpt_dir: Path) -> list[dict]:
    """The rows of the run's ``training_history.csv`` (beside ``ckpt_dir``; empty when missing)."""
    try:
        with open(ckpt_dir.parent / "output" / "train" / "training_history.csv", newline="") as f:
            return list(csv.DictReader(f))
    except OSError:
        return []


def _epochs(history: list[dict]) -> tuple[int | None, float | None]:
    """Epochs trained and their training CPU seconds (None for a history without that column)."""
    if not history:
        return None, None
    cpu = [r.get("epoch_cpu_seconds") for r in history]
    return len(history), (sum(float(c) for c in cpu) if all(cpu) else None)


def command_line(argv: Sequence[str]) -> str:
    return shlex.join(["python", "scripts/reproduce_results.py", *argv])
