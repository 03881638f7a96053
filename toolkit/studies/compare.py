"""`cit compare`: train (or take already trained) several bundles on one saved split, evaluate them on
the same test set and compare them.

Layout of the output folder ``out``::

    out/datalist.json                   the one split every model uses (``datalist_for``)
    out/runs/<name>/train.log           what `python -m monai.bundle run training` printed
    out/runs/<name>/models, output      the run's ckpt_dir and output_dir
    out/runs/<name>/evaluate.log, eval  the evaluation's log and eval_dir (predictions.csv)
    out/runs/<name>/run.json            the commands run and their exit codes (for ``reuse``)
    out/comparison.md, .csv, .json      the table (``toolkit.studies.compare_table``)

An override may name the weights an earlier model of the same comparison trained as
``{model:<name>}`` (e.g. a distillation student's ``--teacher_ckpt {model:teacher}``: the teacher is
then trained on the same split first); their hash is part of the run's recipe, so new teacher weights
retrain the student.

Each bundle is trained and evaluated with MONAI's bundle runner in a subprocess, exactly as a user
runs it, so a crash stays in its model's row and log. Every model must have been trained on the
shared split (same images in training / validation / test, checked from the split file its
``model_info.json`` points to) and must have predicted the same test rows; the table is computed
here from the predictions (``toolkit.evaluation.compare``), not taken from each run's metrics.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from monai.bundle import ConfigParser

from toolkit.bundle.configs import base_config_dir, read_config
from toolkit.bundle.datalists import DATALIST_NAME, SplitMismatchError, datalist_for, read_json_object
from toolkit.bundle.description import load_model_info
from toolkit.data import load_datalist
from toolkit.data.datalist import split_keys
from toolkit.evaluation.compare import align_predictions, compare_predictions
from toolkit.evaluation.report import read_predictions
from toolkit.evaluation.thresholds import evaluation_threshold
from toolkit.io import atomic_write_json, sha256_file
from toolkit.studies.compare_table import write_comparison
from toolkit.studies.runs import Progress, epochs_written, exit_reason, run_logged

logger = logging.getLogger(__name__)

# ids `cit compare` sets itself for every run; an override of them would break the comparison
RESERVED = (
    "config_file",
    "bundle_root",
    "ckpt_dir",
    "ckpt_path",
    "output_dir",
    "eval_dir",
    "dataset_dir",
    "datalist_file",
    "eval_split",
)
SAFE_NAME = re.compile(r"[A-Za-z0-9._-]+")
MODEL_REFERENCE = re.compile(r"\{model:([A-Za-z0-9._-]+)\}")  # an earlier model's weights, in an override
# what a model's own checks raise: missing files, a bad model description or split, an unknown id
MODEL_ERRORS = (OSError, ValueError, KeyError)


@dataclass
class ModelSpec:
    """One row of the comparison: a bundle to train, or an already-trained model (``ckpt_dir``)."""

    name: str
    bundle: Path
    ckpt_dir: Path | None = None  # already trained: its model.pt + model_info.json
    trained_output_dir: Path | None = None  # already trained: its output_dir (holds the training split)
    overrides: list[str] = field(default_factory=list)  # ["--key", "value", ...] for this model only


@dataclass
class ModelRun:
    """What happened to one model."""

    name: str
    bundle: str
    status: str = "ok"  # ok | failed
    stage: str = ""  # where it failed: training | split check | evaluation | predictions
    error: str = ""
    log: str = ""
    ckpt_dir: str = ""
    eval_dir: str = ""
    overrides: list = field(default_factory=list)  # this model's own (--set)
    seconds: dict = field(default_factory=dict)  # wall time per stage (of the earlier run when reused)
    reused: list = field(default_factory=list)

    def fail(self, stage: str, error: str, log: str | Path = "") -> ModelRun:
        self.status, self.stage, self.error, self.log = "failed", stage, error, str(log)
        return self


def parse_overrides(tokens: Sequence[str]) -> list[str]:
    """``["--max_epochs", "1", "--image_size=64"]`` -> ``["--max_epochs", "1", "--image_size", "64"]``;
    raises ValueError for a token that is not ``--key value`` or for an id `cit compare` sets itself."""
    out, i = [], 0
    tokens = list(tokens)
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("--") or len(token) == 2:
            raise ValueError(f"bundle overrides are --key value pairs; got {token!r}")
        if "=" in token:
            key, value = token[2:].split("=", 1)
            i += 1
        elif i + 1 < len(tokens):
            key, value = token[2:], tokens[i + 1]
            i += 2
        else:
            raise ValueError(f"bundle override {token} has no value")
        if key.split("#")[0] in RESERVED:
            raise ValueError(f"--{key} is set by `cit compare` for each run and cannot be overridden")
        out += [f"--{key}", value]
    return out


def _pairs(overrides: Sequence[str]) -> dict[str, str]:
    return {overrides[i][2:]: overrides[i + 1] for i in range(0, len(overrides), 2)}


# ---------------------------------------------------------------------------------------------
# The shared split


def shared_split(dataset_dir: str | os.PathLike, out_dir: Path, seed: int = 0, **split_options) -> Path:
    """Build (or keep, when the spec is unchanged) the one split of the comparison: ``out/datalist.json``."""
    if not dataset_dir:
        raise ValueError("a data set is needed (--dataset-dir): a folder, label file, .npz or datalist .json")
    return Path(datalist_for(dataset_dir, out_dir, seed=seed, **split_options))


def _split_sets(doc: dict) -> dict[str, set]:
    return {k: {(json.dumps(i["image"]), json.dumps(i["label"])) for i in doc[k]} for k in split_keys(doc)}


def split_differences(doc: dict, shared: dict) -> list[str]:
    """How the split of a loaded datalist differs from the shared one (empty: same images and labels
    in every split, same classes)."""
    found = []
    if list(doc["labels"]) != list(shared["labels"]):
        found.append(f"classes {doc['labels']} instead of {shared['labels']}")
    mine, theirs = _split_sets(doc), _split_sets(shared)
    for key in sorted(set(mine) | set(theirs)):
        a, b = mine.get(key, set()), theirs.get(key, set())
        if a != b:
            found.append(f"{key}: {len(a - b)} image(s) not in the shared split, {len(b - a)} missing")
    return found


def check_trained_on(ckpt_dir: Path, training_datalist: Path, shared: dict, shared_path: Path) -> None:
    """Refuse a model that was not trained on the shared split.

    ``training_datalist`` is the split file of the model's training run; its fingerprint must be the
    one recorded in ``ckpt_dir/model_info.json`` and its images the shared split's."""
    info = load_model_info(ckpt_dir)
    if not info.split_fingerprint:
        raise SplitMismatchError(
            f"{ckpt_dir}/model_info.json records no split fingerprint: cannot tell "
            "which images the model was trained on"
        )
    if not training_datalist.is_file():
        raise FileNotFoundError(
            f"cannot check the split {ckpt_dir} was trained on: {training_datalist} is missing (give the "
            "training run's output folder as NAME=CKPT_DIR,OUTPUT_DIR)"
        )
    recorded = read_json_object(training_datalist).get("split_fingerprint")
    if recorded != info.split_fingerprint:
        raise SplitMismatchError(
            f"{ckpt_dir} was trained on split {info.split_fingerprint}, but "
            f"{training_datalist} holds split {recorded}"
        )
    differences = split_differences(load_datalist(training_datalist), shared)
    if differences:
        raise SplitMismatchError(
            f"{ckpt_dir} was trained on another split than {shared_path}: " + "; ".join(differences)
        )


# ---------------------------------------------------------------------------------------------
# One model


PACKAGE = Path(__file__).resolve().parents[1]  # the toolkit package


def recipe_digest(bundle: Path) -> str:
    """SHA-256 over the bundle's configs, the shared base and the toolkit code a bundle run executes.

    A run is reused only while all three are unchanged: code is part of the recipe (an augmentation
    fix changes what the same config trains). The code is every module a bundle run can import: the
    layers up to ``toolkit.bundle`` (docs/architecture.md; not ``toolkit.studies``, which only starts
    runs and writes tables, nor ``toolkit.inference`` or ``toolkit.cli``).
    """
    configs = sorted(bundle.glob("configs/*.json")) + sorted(base_config_dir(bundle).glob("*.json"))
    named = [(p.name, p) for p in configs]
    named += [
        (p.relative_to(PACKAGE.parent).as_posix(), p)
        for p in sorted(PACKAGE.rglob("*.py"))
        if p.relative_to(PACKAGE).parts[0] not in ("studies", "inference", "cli")
    ]
    digest = hashlib.sha256()
    for name, path in named:
        digest.update(name.encode() + path.read_bytes())
    return digest.hexdigest()[:16]


@dataclass
class Comparison:
    """Settings shared by every model of one `cit compare` run."""

    out_dir: Path
    datalist: Path
    overrides: list[str]
    reuse: bool = False

    def run_dir(self, name: str) -> Path:
        return self.out_dir / "runs" / name


def _record(run_dir: Path) -> dict:
    return read_json_object(run_dir / "run.json")


def _reusable(run_dir: Path, stage: str, command: list[str], digest: str, outputs: Sequence[Path]) -> bool:
    done = _record(run_dir).get(stage) or {}
    return (
        done.get("command") == command
        and done.get("recipe") == digest
        and done.get("returncode") == 0
        and all(p.exists() for p in outputs)
    )


def _remember(
    run_dir: Path, stage: str, command: list[str], digest: str, returncode: int, seconds: float
) -> None:
    record = _record(run_dir)
    record[stage] = {"command": command, "recipe": digest, "returncode": returncode, "seconds": seconds}
    if stage == "training":
        record.pop("evaluation", None)
    atomic_write_json(run_dir / "run.json", record)


def bundle_command(
    run_id: str, config: Path, bundle: Path, ids: dict[str, str], overrides: list[str]
) -> list[str]:
    """The ``python -m monai.bundle run`` command a user types for ``run_id`` of ``config``."""
    command = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        run_id,
        "--config_file",
        str(config),
        "--bundle_root",
        str(bundle),
    ]
    for key, value in ids.items():
        command += [f"--{key}", value]
    return command + overrides


def eval_overrides(config: Path, overrides: list[str]) -> list[str]:
    """The overrides whose id the evaluation config defines (``--image_size`` yes, ``--max_epochs`` no)."""
    known = read_config(config)
    kept = []
    for key, value in _pairs(overrides).items():
        if key.split("#")[0] in known:
            kept += [f"--{key}", value]
    return kept


def _max_epochs(train_config: Path, overrides: list[str]) -> int | None:
    """The epochs a training run will make (for the progress bar); None when not a plain number."""
    value = _pairs(overrides).get("max_epochs")
    if value is None:
        parser = ConfigParser(read_config(train_config))
        parser.resolve_macro_and_relative_ids()  # e.g. "%configs/base/chestxray14.json#max_epochs"
        value = parser.get("max_epochs")
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


@dataclass
class _Job:
    """One model's run: what `run_model` hands to its stages."""

    spec: ModelSpec
    comparison: Comparison
    run: ModelRun
    run_dir: Path
    cwd: Path  # the repository root the base macros point into
    digest: str
    overrides: list[str]
    eval_overrides: list[str]
    progress: Progress | None = None

    def config(self, name: str) -> Path:
        return self.spec.bundle / "configs" / f"{name}.json"

    def failed(self, stage: str, error: str, log: str | Path = "") -> ModelRun:
        if self.progress is not None:
            self.progress.close(f"failed at {stage}: {error}")
        return self.run.fail(stage, error, log)


def run_model(spec: ModelSpec, comparison: Comparison, shared: dict, position: str) -> ModelRun:
    """Train (unless already trained), check the split and evaluate one model; never raises for a
    failure of the model itself, which is returned in the :class:`ModelRun`."""
    run_dir = comparison.run_dir(spec.name)
    run_dir.mkdir(parents=True, exist_ok=True)
    run = ModelRun(spec.name, str(spec.bundle), overrides=list(spec.overrides))
    try:
        overrides, references = _fill_model_references(
            comparison.overrides + spec.overrides, comparison, spec.name
        )
        job = _Job(
            spec,
            comparison,
            run,
            run_dir,
            base_config_dir(spec.bundle).parents[1],
            "-".join([recipe_digest(spec.bundle), *references]),
            overrides,
            [],
        )
        job.eval_overrides = eval_overrides(job.config("evaluate"), overrides)
        epochs = None if spec.ckpt_dir else _max_epochs(job.config("train"), overrides)
    except MODEL_ERRORS as err:
        logger.warning("%s %s: failed at set-up: %s: %s", position, spec.name, type(err).__name__, err)
        return run.fail("set-up", f"{type(err).__name__}: {err}")
    job.progress = Progress(spec.name, position, epochs, train=spec.ckpt_dir is None)

    if spec.ckpt_dir is None:
        ckpt_dir, output_dir = run_dir / "models", run_dir / "output"
        training_datalist = output_dir / DATALIST_NAME
        if not _train(job, ckpt_dir, output_dir):
            return run
    else:
        ckpt_dir, output_dir = spec.ckpt_dir, run_dir / "output"
        training_datalist = (spec.trained_output_dir or ckpt_dir.parent / "output") / DATALIST_NAME
    run.ckpt_dir = str(ckpt_dir)
    try:
        check_trained_on(ckpt_dir, training_datalist, shared, comparison.datalist)
    except MODEL_ERRORS as err:
        return job.failed("split check", f"{type(err).__name__}: {' '.join(str(err).split())}")
    if _evaluate(job, ckpt_dir, output_dir):
        job.progress.close("evaluated" + (f" (reused: {', '.join(run.reused)})" if run.reused else ""))
    return run


def _fill_model_references(overrides: list[str], comparison: Comparison, name: str) -> tuple[list[str], list]:
    """``{model:<earlier>}`` in ``overrides`` -> the weights that model of this comparison trained, and
    the start of their SHA-256 for the recipe digest."""
    hashes = []

    def weights(match: re.Match) -> str:
        found = comparison.run_dir(match.group(1)) / "models" / "model.pt"
        if match.group(1) == name or not found.is_file():
            raise FileNotFoundError(
                f"{match.group(0)}: {found} does not exist; list the model {match.group(1)!r} before "
                f"{name!r} so that it is trained first (and check that its training succeeded)"
            )
        hashes.append(sha256_file(found)[:16])
        return str(found)

    return [MODEL_REFERENCE.sub(weights, value) for value in overrides], hashes


def _train(job: _Job, ckpt_dir: Path, output_dir: Path) -> bool:
    """Train the bundle into the run's folder (or reuse an identical earlier training); False if it failed."""
    ids = {
        "dataset_dir": str(job.comparison.datalist),
        "ckpt_dir": str(ckpt_dir),
        "output_dir": str(output_dir),
    }
    command = bundle_command("training", job.config("train"), job.spec.bundle, ids, job.overrides)
    if job.comparison.reuse and _reusable(
        job.run_dir, "training", command, job.digest, [ckpt_dir / "model.pt"]
    ):
        job.run.reused.append("training")
        job.run.seconds["training"] = _record(job.run_dir)["training"].get("seconds")  # of the run reused
        job.progress.stage("training reused", ckpt_dir)
        return True
    for stale in (ckpt_dir, output_dir, job.run_dir / "eval"):  # a failed run must not leave old weights
        shutil.rmtree(stale, ignore_errors=True)
    log = job.run_dir / "train.log"
    job.progress.stage("training", f"log: {log}")
    history = output_dir / "train" / "training_history.csv"
    start = time.monotonic()
    code = run_logged(command, job.cwd, log, lambda: job.progress.epochs_done(epochs_written(history)))
    job.run.seconds["training"] = round(time.monotonic() - start, 1)
    _remember(job.run_dir, "training", command, job.digest, code, job.run.seconds["training"])
    if code != 0:
        job.failed("training", exit_reason(code, log), log)
    return code == 0


def _evaluate(job: _Job, ckpt_dir: Path, output_dir: Path) -> bool:
    """Evaluate the model on the shared test split (or reuse identical earlier predictions)."""
    eval_dir = job.run_dir / "eval"
    weights = ckpt_dir / "model.pt"
    digest = (
        f"{job.digest}-{sha256_file(weights)[:16]}" if weights.is_file() else job.digest
    )  # new weights: again
    ids = {"ckpt_dir": str(ckpt_dir), "output_dir": str(output_dir), "eval_dir": str(eval_dir)}
    if job.spec.ckpt_dir is not None:  # its own output_dir is elsewhere: the shared file is the checked split
        ids["datalist_file"] = str(job.comparison.datalist)
    command = bundle_command("evaluating", job.config("evaluate"), job.spec.bundle, ids, job.eval_overrides)
    job.run.eval_dir = str(eval_dir)
    if job.comparison.reuse and _reusable(
        job.run_dir, "evaluation", command, digest, [eval_dir / "predictions.csv"]
    ):
        job.run.reused.append("evaluation")
        job.run.seconds["evaluation"] = _record(job.run_dir)["evaluation"].get("seconds")
        return True
    shutil.rmtree(eval_dir, ignore_errors=True)
    log = job.run_dir / "evaluate.log"
    job.progress.stage("evaluating", f"log: {log}")
    start = time.monotonic()
    code = run_logged(command, job.cwd, log)
    job.run.seconds["evaluation"] = round(time.monotonic() - start, 1)
    _remember(job.run_dir, "evaluation", command, digest, code, job.run.seconds["evaluation"])
    if code != 0:
        job.failed("evaluation", exit_reason(code, log), log)
    return code == 0


# ---------------------------------------------------------------------------------------------
# The whole comparison


def compare_bundles(
    models: Sequence[ModelSpec],
    dataset_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    seed: int = 0,
    split_options: dict | None = None,
    overrides: Sequence[str] = (),
    reuse: bool = False,
    n_resamples: int = 1000,
    rank_by: str = "auroc",
    alpha: float = 0.05,
    threshold: float = 0.5,
    command_line: str | None = None,
) -> dict:
    """Run every model (see the module docstring), compare the ones that produced predictions and
    write the table. Returns ``{"rows": [...], "comparison": ... or None, "files": {...}}``."""
    names = [m.name for m in models]
    duplicates = sorted(n for n, k in Counter(names).items() if k > 1)
    if duplicates:
        raise ValueError(f"model names must be unique; given twice: {duplicates} (name them NAME=BUNDLE)")
    if not models:
        raise ValueError("no model to compare")
    unusable = [n for n in names if not SAFE_NAME.fullmatch(n) or n in (".", "..")]
    if unusable:
        raise ValueError(f"model names become folder names: use letters, digits, '.', '_', '-' ({unusable})")
    overrides = parse_overrides(overrides)
    out_dir = Path(out_dir).expanduser().resolve()
    datalist = shared_split(dataset_dir, out_dir, seed=seed, **(split_options or {}))
    shared = load_datalist(datalist)
    comparison = Comparison(out_dir, datalist, overrides, reuse)
    runs = [run_model(m, comparison, shared, f"[{i}/{len(models)}]") for i, m in enumerate(models, start=1)]

    predictions = {}
    for run in runs:
        if run.status != "ok":
            continue
        try:
            predictions[run.name] = read_predictions(Path(run.eval_dir) / "predictions.csv")
        except MODEL_ERRORS as err:
            run.fail("predictions", f"{type(err).__name__}: {err}", Path(run.eval_dir) / "predictions.csv")
    _refuse_other_rows(predictions, runs)

    result = None
    if predictions:
        test, probs = align_predictions(predictions)
        own = {name: model_threshold(pred, threshold) for name, pred in predictions.items()}
        result = compare_predictions(
            test, probs, threshold=own, n_resamples=n_resamples, seed=seed, alpha=alpha, rank_by=rank_by
        )
    doc = read_json_object(datalist)
    context = {
        "command": command_line,
        "dataset_dir": str(dataset_dir),
        "split": {
            "datalist": str(datalist),
            "fingerprint": doc.get("split_fingerprint"),
            "seed": seed,
            "counts": {k: len(shared[k]) for k in split_keys(shared)},
        },
        "overrides": comparison.overrides,
    }
    rows = [_row(run) for run in runs]
    files = write_comparison(result, rows, out_dir, context)
    return {"rows": rows, "comparison": result, "files": files}


def model_threshold(pred, default: float):
    """A multi-label model's per-class thresholds chosen on validation (the ones its own test metrics
    used, recorded in ``metrics.json`` beside its predictions), else ``default``."""
    if not pred.multi_label:
        return default
    used = evaluation_threshold(Path(pred.path).parent, pred.class_names)
    return default if isinstance(used, float) else used


def _refuse_other_rows(predictions: dict, runs: list[ModelRun]) -> None:
    """Keep the models that predicted the most common set of test rows; the others fail, named."""
    if len(predictions) < 2:
        return
    row_sets = {name: frozenset(p.images) for name, p in predictions.items()}
    common, _ = Counter(row_sets.values()).most_common(1)[0]
    reference = next(n for n, rows in row_sets.items() if rows == common)
    for run in runs:
        if run.name in row_sets and row_sets[run.name] != common:
            theirs = row_sets[run.name]
            run.fail(
                "predictions",
                f"its test rows differ from {reference}'s: {len(common - theirs)} image(s) "
                f"missing, {len(theirs - common)} extra",
                predictions[run.name].path,
            )
            del predictions[run.name]


def _row(run: ModelRun) -> dict:
    row = {
        "name": run.name,
        "status": run.status,
        "bundle": run.bundle,
        "ckpt_dir": run.ckpt_dir,
        "eval_dir": run.eval_dir,
        "overrides": run.overrides,
        "seconds": run.seconds,
        "reused": run.reused,
    }
    if run.status != "ok":
        row.update(stage=run.stage, error=run.error, log=run.log)
    return row
