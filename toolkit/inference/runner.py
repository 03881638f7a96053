"""Batch inference over a folder: discovery -> resumable, sharded, fault-tolerant prediction -> outputs.

Flow of :func:`run_inference`:

1. rank 0 takes the output lock; every rank loads the bundle; rank 0 discovers the inputs (a 3D
   network takes a DICOM series as one input), checks that the journals were written with the same
   fingerprint (model, config, options that change rows; see ``fingerprint``) and drops the inputs
   already in them (resume; ``--retry-errors`` does error rows again; ``--restart`` discards them);
   under ``torchrun`` it broadcasts the work list and every rank takes ``pending[rank::world]``;
2. each rank feeds its share through a ``torch.utils.data.DataLoader`` whose dataset returns an
   error record instead of raising (the one place where anything a file causes becomes its row),
   runs the bundle's network batch by batch and appends the rows of each batch to its own journal
   (flushed + fsynced);
3. rank 0 merges all journals into ``predictions.csv`` / ``predictions.jsonl`` (temp + rename),
   optionally writes one DICOM SR per study, and prints a summary by status.

Exit codes (also in `cit infer --help`): 0 every input processed (``ok`` or ``skipped``),
3 some inputs failed (rows with status ``error``), 4 another run holds the output folder,
5 the output holds results of another model or other options (``--restart`` to discard them),
6 no input found (empty or image-less folder, e.g. an unmounted share), 1 the run itself failed
(bundle not loadable, a process died before all rows were written), 2 invalid command line.

Every file written is inside ``--output`` (names built from input data go through ``naming``), and
the output folder and earlier results of this tool are never read as inputs.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime
import io
import json
import logging
import os
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from toolkit.bundle import InferenceBundle, load_bundle
from toolkit.engines import prepare_network
from toolkit.evaluation.gradcam import Explainer, overlay
from toolkit.inference.backends import (
    Bf16Network,
    OnnxRuntimeNetwork,
    exported_model,
    resolve_backend,
    run_precision,
)
from toolkit.inference.dicom_sr import SR_FOLDER, write_study_reports
from toolkit.inference.discovery import (
    OUTPUT_ENTRIES,
    QUIET_LOGGERS,
    DicomFilters,
    Ignored,
    InputItem,
    discover_inputs,
    quiet_dicom_warnings,
)
from toolkit.inference.fingerprint import RUN_FILE, describe_change, run_identity
from toolkit.inference.locking import LOCK_NAME, LockedError, OutputLinkError, OutputLock, refuse_links
from toolkit.inference.naming import inside, overlay_file_name, uid_file_stem
from toolkit.inference.operator_summary import (
    SUMMARY_NAME,
    OperatorSummary,
    throughput,
    utc_now,
    write_summary,
)
from toolkit.inference.privacy import Pseudonymiser, scrub_paths
from toolkit.inference.writers import (
    PARTS_DIR,
    ResultJournal,
    all_part_paths,
    part_path,
    read_journals,
    write_final_outputs,
)
from toolkit.io import atomic_write_bytes, atomic_write_json, remembered_digests
from toolkit.transforms.readers import DicomReader, is_decoder_panic

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_RUN_FAILED = 1
EXIT_USAGE = 2  # argparse's code for an invalid command line
EXIT_INPUTS_FAILED = 3
EXIT_LOCKED = 4
EXIT_RESUME_REFUSED = 5
EXIT_NO_INPUTS = 6
GRADCAM_FOLDER = "gradcam"

BASE_COLUMNS = [
    "path",
    "kind",
    "frame",
    "study_instance_uid",
    "series_instance_uid",
    "sop_instance_uid",
    "modality",
    "status",
    "reason",
    "pred",
    "pred_name",
]
MODEL_COLUMNS = ["model_name", "model_version", "model_sha256", "backend", "precision"]
PATIENT_COLUMNS = ["patient_id", "patient_name"]
# What the network or the postprocessing raise on an input they cannot take (torch: RuntimeError, its
# out-of-memory error included; the checks of a row: ValueError). Anything else is a bug and surfaces.
NETWORK_ERRORS = (RuntimeError, ValueError)


@dataclass
class InferenceOptions:
    """Everything `cit infer` can be told; see ``toolkit.cli.infer`` for the meaning of each."""

    bundle: str
    input: str
    output: str
    ckpt_path: str | None = None
    device: str = "auto"
    batch_size: int = 16
    workers: int = 2
    threads: int = 0  # torch threads of the network on CPU; 0 keeps torch's default
    filters: DicomFilters = field(default_factory=DicomFilters)
    frames: str = "reject"  # reject | each  (multi-frame DICOM for 2D models)
    include_patient_info: bool = False
    dicom_sr: bool = False
    gradcam: bool = False
    retry_errors: bool = False
    restart: bool = False  # discard the results already in --output and start afresh
    pseudonymise_paths: bool = False  # keyed hash of the relative path instead of the path, everywhere
    sr_anonymise: bool = False  # DICOM SR without the patient / study attributes of the source images
    progress: bool = True
    verbose: bool = False
    overrides: dict = field(default_factory=dict)
    backend: str = "auto"  # auto | pytorch | onnxruntime | onnxruntime-int8 (see toolkit.inference.backends)
    precision: str = "fp32"  # fp32 | bf16 (pytorch backend); resolved to what the network runs in (int8...)
    trust_bundle: bool = False  # run a foreign bundle's code (toolkit.bundle.trust)
    # inputs decided before the run, one row each as they are (status "error" and reason set), e.g. the
    # instances a PACS did not deliver (toolkit.inference.pacs.run); one replaces a discovered input of its path
    decided_inputs: list[InputItem] = field(default_factory=list)


@dataclass
class RunSummary:
    """What a run did; ``exit_code`` is what `cit infer` returns."""

    counts: dict[str, int]
    processed_now: int
    already_done: int
    ignored: Ignored
    exit_code: int
    csv_path: Path | None = None
    sr_paths: list[Path] = field(default_factory=list)
    seconds: float = 0.0  # whole run
    processing_seconds: float = 0.0  # loading + predicting this process's share (rank 0 under torchrun)
    inputs: int = 0  # rows the run stands for
    operator: OperatorSummary | None = None  # what summary.json says (rank 0)


# ---------------------------------------------------------------------------------------------
# distributed helpers (torchrun sets WORLD_SIZE / RANK / LOCAL_RANK)


def _dist_env() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return world, int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))


def resolve_device(device: str, local_rank: int) -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda was asked for but no GPU is available")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device(device)


def _broadcast(obj, world: int):
    if world == 1:
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


# ---------------------------------------------------------------------------------------------
# data loading: one record per item, never an exception


class InferenceDataset(torch.utils.data.Dataset):
    """Runs the bundle's preprocessing on one work item; failures become ``{"error": reason}`` records."""

    def __init__(self, items: list[InputItem], preprocessing, expected_spatial: tuple[int, ...] | None):
        self.items = items
        self.preprocessing = preprocessing
        self.expected_spatial = expected_spatial

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        item = self.items[index]
        record = {"index": index, "image": None, "error": None}
        try:
            with quiet_dicom_warnings():
                record["image"] = self.load_image(item)
        except BaseException as exc:  # noqa: BLE001
            # THE per-file boundary of a run. Reading and preprocessing parse whatever bytes the user's
            # files hold, through pydicom, Pillow, nibabel, native decoders and the bundle's own
            # transforms (MONAI's Compose re-raises every exception as RuntimeError anyway), so anything
            # one file makes them raise becomes that file's error row: one bad file never stops a run.
            # That includes a panic of a Rust decoder, which PyO3 raises as a BaseException; Ctrl-C
            # and exits still stop the run. The traceback goes to the debug log (`cit infer --verbose`),
            # so an unexpected error is still seen.
            if not isinstance(exc, Exception) and not is_decoder_panic(exc):
                raise
            logger.debug("input %s failed to load", item.path, exc_info=True)
            record["error"] = _reason(exc, item.abs_path)
            if is_decoder_panic(exc):
                record["error"] = f"the image decoder crashed on this file ({record['error']})"[:400]
        return record

    def load_image(self, item: InputItem) -> torch.Tensor:
        source = item.files if item.files else item.abs_path
        if item.frame is None:
            out = self.preprocessing({"image": source})
        else:
            with select_dicom_frame(self.preprocessing, item.frame):
                out = self.preprocessing({"image": source})
        image = out["image"] if isinstance(out, dict) else out
        image = torch.as_tensor(image).as_subclass(torch.Tensor).float()
        if self.expected_spatial is not None and tuple(image.shape[1:]) != tuple(self.expected_spatial):
            raise ValueError(
                f"wrong dimensions: preprocessed image has shape {tuple(image.shape)}, "
                f"the network expects (C, {', '.join(map(str, self.expected_spatial))})"
            )
        if not torch.isfinite(image).all():
            raise ValueError("image contains NaN or infinite values")
        return image


@contextlib.contextmanager
def select_dicom_frame(preprocessing, frame: int):
    """Make the DICOM reader(s) inside ``preprocessing`` decode ``frame`` for the duration of the block.

    The bundle's chain fixes the reader's ``frame`` option; `--frames each` needs it per item. Each
    DataLoader worker has its own copy of the chain and handles one item at a time, so this is safe.
    """
    readers = _find_dicom_readers(preprocessing)
    if not readers:
        raise ValueError(
            "the bundle's preprocessing has no toolkit DicomReader, so single frames cannot be chosen"
        )
    saved = [r.frame for r in readers]
    for r in readers:
        r.frame = frame
    try:
        yield
    finally:
        for r, f in zip(readers, saved, strict=True):
            r.frame = f


def _find_dicom_readers(obj, depth: int = 0) -> list:
    """DicomReader instances reachable through Compose / LoadImage(d) / MedicalImageReader attributes."""
    if isinstance(obj, DicomReader):
        return [obj]
    if depth > 6 or obj is None:
        return []
    found = []
    for attr in ("transforms", "_loader", "readers", "dicom"):
        value = getattr(obj, attr, None)
        for child in value if isinstance(value, (list, tuple)) else [value]:
            if child is not None and child is not obj:
                found += _find_dicom_readers(child, depth + 1)
    return found


def _reason(exc: BaseException, path: str | None = None) -> str:
    """One line: the root cause (MONAI wraps transform errors in RuntimeError), without the file path."""
    while exc.__cause__ is not None and isinstance(exc, RuntimeError) and "applying transform" in str(exc):
        exc = exc.__cause__
    reason = getattr(exc, "reason", None)  # toolkit ImageReadError / DicomReadError: message minus file
    text = reason if isinstance(reason, str) else " ".join(str(exc).split())
    known = [(path, "<file>"), (os.path.realpath(path), "<file>")] if path else []
    text = scrub_paths(text, known)  # reasons never hold absolute paths (the path is its own column)
    if isinstance(reason, str):
        return text[:400]
    return (f"{type(exc).__name__}: {text}" if text else type(exc).__name__)[:400]


@dataclass
class LoadedBatch:
    """One loader batch: every item's record (``index``, ``error``) and the good images stacked per shape.

    The stacking happens in the loader worker, so one shared-memory tensor per shape crosses to the main
    process instead of one per image (each crossing hands over a file descriptor: about 1 ms, as much as
    an int8 network needs for an image)."""

    records: list[dict]
    groups: list[tuple[torch.Tensor, list[int]]]  # (images (B, C, ...), their records' positions)


def collate_by_shape(records: list[dict]) -> LoadedBatch:
    """The DataLoader's ``collate_fn``: records whose image failed keep their error and no image."""
    by_shape: dict[tuple, list[int]] = {}
    for position, rec in enumerate(records):
        if rec["image"] is not None:
            by_shape.setdefault(tuple(rec["image"].shape), []).append(position)
    groups = [
        (torch.stack([records[p].pop("image") for p in positions]), positions)
        for positions in by_shape.values()
    ]
    for rec in records:
        rec.pop("image", None)
    return LoadedBatch(records, groups)


# ---------------------------------------------------------------------------------------------
# rows


def output_columns(bundle: InferenceBundle, options: InferenceOptions) -> list[str]:
    columns = list(BASE_COLUMNS) + [f"prob_{c}" for c in bundle.class_names] + MODEL_COLUMNS
    if options.gradcam:
        columns.append("gradcam")
    if options.include_patient_info:
        columns += PATIENT_COLUMNS
    return columns


def _base_row(item: InputItem, bundle: InferenceBundle, options: InferenceOptions, stamp: dict) -> dict:
    """The row of ``item`` before prediction; ``stamp``: ``fingerprint``, ``model_sha256``, ``backend`` and
    ``precision`` of the run."""
    row = {
        "key": item.key,
        "path": item.path,
        "kind": item.kind,
        "frame": item.frame,
        "study_instance_uid": item.study_instance_uid,
        "series_instance_uid": item.series_instance_uid,
        "sop_instance_uid": item.sop_instance_uid,
        "modality": item.modality,
        "status": item.status,
        "reason": item.reason,
        "pred": None,
        "pred_name": None,
        "model_name": bundle.name,
        "model_version": bundle.version,
        **stamp,
    }
    for name in bundle.class_names:
        row[f"prob_{name}"] = None
    if options.include_patient_info:
        row["patient_id"], row["patient_name"] = item.patient_id, item.patient_name
    return row


# ---------------------------------------------------------------------------------------------
# the run


def run_inference(options: InferenceOptions) -> RunSummary:
    """Run `cit infer` with ``options`` (in one process, or as one rank under torchrun)."""
    started = time.perf_counter()
    started_at = utc_now()
    world, rank, local_rank = _dist_env()
    device = resolve_device(options.device, local_rank)
    own_group = world > 1 and not torch.distributed.is_initialized()
    if own_group:
        backend = "nccl" if device.type == "cuda" else "gloo"
        torch.distributed.init_process_group(backend=backend, timeout=datetime.timedelta(hours=24))
    try:
        with remembered_digests():  # the weights and exports are hashed by several checks
            return _run(options, (started, started_at), world, rank, device)
    finally:
        if own_group:
            torch.distributed.destroy_process_group()


def _run(
    options: InferenceOptions, started: tuple[float, str], world: int, rank: int, device: torch.device
) -> RunSummary:
    """``started``: ``time.perf_counter()`` and the UTC time when the run began."""
    output = Path(options.output)
    check_paths(options)  # before the lock: a wrong --input must not leave a folder behind

    lock = OutputLock(output)
    status = None
    if rank == 0:
        try:
            lock.acquire()
            status = {}
            refuse_links(output, OUTPUT_ENTRIES - {LOCK_NAME})
        except LockedError as exc:
            status = {"locked": str(exc)}
        except OutputLinkError as exc:
            lock.release()
            status = {"refused": str(exc)}
    status = _broadcast(status, world)
    if status:
        if rank == 0:
            print(f"cit infer: {status.get('locked') or status['refused']}", file=sys.stderr)
        return RunSummary({}, 0, 0, Ignored(), EXIT_LOCKED if "locked" in status else EXIT_RUN_FAILED)

    try:
        bundle = load_bundle_for_run(options, device)
        options = with_backend(options, bundle, device)
        plan, failure = None, None
        if rank == 0:
            try:
                plan = _plan(options, bundle)
            except Exception as exc:  # noqa: BLE001 - not swallowed: re-raised below, once the other ranks know
                plan, failure = {"failed": f"{type(exc).__name__}: {exc}"}, exc
        plan = _broadcast(plan, world)
        if "failed" in plan:
            if failure is not None:
                raise failure
            raise RuntimeError(f"rank 0 failed: {plan['failed']}")
        if "stop" in plan:  # nothing to do (no input) or a resume refused: said in one line, own exit code
            if rank == 0:
                print(f"cit infer: {plan['stop']}", file=sys.stderr)
            return RunSummary({}, 0, 0, plan.get("ignored", Ignored()), plan["code"])
        items: list[InputItem] = plan["items"]
        mine = [items[i] for i in plan["pending"][rank::world]]
        t_process = time.perf_counter()
        processed = process_items(
            mine, bundle, options, device, part_path(output, rank), lock, rank, world, plan["stamp"]
        )
        t_process = time.perf_counter() - t_process
        if world > 1:
            torch.distributed.barrier()
        summary = None
        if rank == 0:
            summary = _finish(
                items,
                bundle,
                options,
                processed_now=len(plan["pending"]),
                already_done=len(items) - len(plan["pending"]),
                ignored=plan["ignored"],
            )
            summary.seconds = time.perf_counter() - started[0]
            summary.processing_seconds = t_process
            summary.operator = _report(summary, options, started[1])
        summary = _broadcast(summary, world)
        if rank != 0:
            summary.processed_now = processed
        return summary
    finally:
        if rank == 0:
            lock.release()  # removes the lock file (and the folders this run created, when empty)


def check_paths(options: InferenceOptions) -> None:
    """Refuse an --input that does not exist or that lies among the output's own files."""
    if not os.path.exists(options.input):
        raise FileNotFoundError(f"--input {options.input} does not exist")
    if not (os.path.isdir(options.input) or os.path.isfile(options.input)):
        raise ValueError(f"--input {options.input} is neither a folder nor a file (a FIFO, socket or device)")
    real_input = Path(os.path.realpath(options.input))
    real_output = Path(os.path.realpath(options.output))
    for entry in (PARTS_DIR, SR_FOLDER, GRADCAM_FOLDER):
        own = real_output / entry
        if real_input == own or own in real_input.parents:
            raise ValueError(f"--input lies inside the output's own '{entry}' folder; choose another --input")


def with_backend(
    options: InferenceOptions, bundle: InferenceBundle, device: torch.device
) -> InferenceOptions:
    """``options`` with the backend and precision this run uses (``resolve_backend``: ``auto`` decided). The
    PyTorch network is built now when the run needs it, so weights that do not fit stop the run before any
    input is read."""
    backend = resolve_backend(options.backend, bundle.ckpt_path, device, options.precision)
    precision = run_precision(backend, options.precision, device, bundle.ckpt_path)
    options = dataclasses.replace(options, backend=backend, precision=precision)
    if backend == "pytorch" or options.gradcam:
        _ = bundle.network
    return options


def load_bundle_for_run(options: InferenceOptions, device: torch.device) -> InferenceBundle:
    return load_bundle(
        options.bundle,
        ckpt_path=options.ckpt_path,
        device=device,
        overrides=options.overrides,
        trust=options.trust_bundle,
    )


def _plan(options: InferenceOptions, bundle: InferenceBundle) -> dict:
    """Rank 0: discover inputs, check the journals were written with this run's fingerprint and find the
    inputs no journal has a (final) result for. A 3D network takes a DICOM series as one input.

    Returns ``{"items", "pending", "ignored", "stamp"}``, or ``{"stop": message, "code": exit code}``."""
    output = Path(options.output)
    items, ignored = discover_inputs(
        options.input,
        options.filters,
        frames=options.frames,
        series_mode=bundle.spatial_dims == 3,
        exclude=options.output,
    )
    decided = {item.path for item in options.decided_inputs}
    items = [item for item in items if item.path not in decided] + list(options.decided_inputs)
    if not items:
        return {
            "stop": f"no input found below --input {options.input} ({ignored} ignored): "
            "nothing to do; is the share mounted?",
            "code": EXIT_NO_INPUTS,
            "ignored": ignored,
        }
    identity = run_identity(bundle, options)
    done = read_journals(all_part_paths(output))
    if options.restart:
        discard_results(output)
        done = {}
    elif done:
        fingerprints = {r.get("fingerprint") for r in done.values()}
        if fingerprints != {identity["fingerprint"]}:
            return {"stop": resume_refusal(output, identity), "code": EXIT_RESUME_REFUSED, "ignored": ignored}
    write_run_file(output, identity)
    if options.pseudonymise_paths:
        pseudonym = Pseudonymiser.for_output(output)
        for item in items:
            item.path = pseudonym(item.path)
    pending = [
        i
        for i, item in enumerate(items)
        if item.key not in done or (options.retry_errors and done[item.key]["status"] == "error")
    ]
    stamp = {
        "fingerprint": identity["fingerprint"],
        "model_sha256": identity["weights_sha256"],
        "backend": options.backend,
        "precision": options.precision,
    }
    return {"items": items, "pending": pending, "ignored": ignored, "stamp": stamp}


def resume_refusal(output: Path, identity: dict) -> str:
    """One line: why the results in ``output`` are not resumed, and what to do."""
    try:
        old = json.loads((output / RUN_FILE).read_text())
    except (OSError, ValueError):  # missing or damaged: say so without details
        old = {}
    changed = describe_change(old, identity) if isinstance(old, dict) and old else ""
    what = f" ({changed})" if changed else ""
    return (
        f"--output already holds results of another model or other options{what}; refusing to mix them: "
        "rerun with --restart to discard them, or choose another --output"
    )


def write_run_file(output: Path, identity: dict) -> None:
    """``run.json``: the fingerprint's parts (no absolute paths), rewritten only when they change."""
    path = output / RUN_FILE
    try:
        if json.loads(path.read_text()) == identity:
            return
    except (OSError, ValueError):  # absent or damaged: written anew
        pass
    atomic_write_json(path, identity)


_OVERLAY_NAME = re.compile(r"[0-9a-f]{16}(_[A-Za-z0-9._-]*)?\.png")
_SR_NAME = re.compile(r"([0-9]+(\.[0-9]+)*|uid-[0-9a-f]{16})\.dcm")


def discard_results(output: Path) -> None:
    """``--restart``: remove what earlier runs wrote to ``output`` (journals, final files, overlays, SRs),
    only files named as this tool names them."""
    for path in all_part_paths(output):
        path.unlink()
    for name in ("predictions.csv", "predictions.jsonl", RUN_FILE):
        (output / name).unlink(missing_ok=True)
    for folder, pattern in ((output / GRADCAM_FOLDER, _OVERLAY_NAME), (output / SR_FOLDER, _SR_NAME)):
        if folder.is_dir() and not folder.is_symlink():
            for path in folder.iterdir():
                if pattern.fullmatch(path.name) and path.is_file() and not path.is_symlink():
                    path.unlink()
            with contextlib.suppress(OSError):  # kept when something else is in it
                folder.rmdir()


def process_items(
    items: list[InputItem],
    bundle: InferenceBundle,
    options: InferenceOptions,
    device: torch.device,
    journal_path: Path,
    lock: OutputLock,
    rank: int,
    world: int,
    stamp: dict,
) -> int:
    """Predict ``items`` and journal one row each; returns how many rows were written."""
    if options.threads > 0:
        torch.set_num_threads(options.threads)
    if options.backend != "pytorch":
        network = OnnxRuntimeNetwork(
            exported_model(bundle.ckpt_path, options.backend), threads=options.threads
        )
    else:
        network = _prepare(bundle.network, device)
        if options.precision == "bf16":
            network = Bf16Network(network)
    use_amp = device.type == "cuda"
    cam = (
        _GradCamWriter(bundle.network, Path(options.output), readable=not options.pseudonymise_paths)
        if options.gradcam
        else None
    )
    decided = [it for it in items if it.status is not None]
    todo = [it for it in items if it.status is None]
    written = 0
    with (
        ResultJournal(journal_path) as journal,
        tqdm(
            total=len(items),
            unit="img",
            desc=f"cit infer{f' [rank {rank}]' if world > 1 else ''}",
            disable=not options.progress,
            position=rank,
            leave=True,
            file=sys.stderr,
            dynamic_ncols=True,
        ) as bar,
    ):
        if decided:
            journal.append(_base_row(it, bundle, options, stamp) for it in decided)
            written += len(decided)
            bar.update(len(decided))
        if not todo:
            return written
        dataset = InferenceDataset(todo, bundle.preprocessing, bundle.image_size)
        workers = max(0, int(options.workers))
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=max(1, options.batch_size),
            shuffle=False,
            num_workers=workers,
            collate_fn=collate_by_shape,
            worker_init_fn=_WorkerInit(lock) if workers else None,
            persistent_workers=False,
            prefetch_factor=4 if workers else None,
        )
        for batch in loader:
            rows = _predict_batch(batch, todo, network, bundle, options, device, use_amp, cam, stamp)
            journal.append(rows)
            written += len(rows)
            bar.update(len(rows))
            if options.verbose:
                for row in rows:
                    if row["status"] == "error":
                        logger.warning("error: %s: %s", row["path"], row["reason"])
    return written


class _WorkerInit:
    """DataLoader worker set-up: one thread each, drop the inherited lock descriptor, no DICOM library logs."""

    def __init__(self, lock: OutputLock):
        self.lock = lock

    def __call__(self, worker_id: int) -> None:
        torch.set_num_threads(1)
        self.lock.release_in_child()
        for name in QUIET_LOGGERS:  # as quiet_dicom_warnings() makes them around every item, once
            logging.getLogger(name).setLevel(logging.CRITICAL)


def _prepare(network: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    return prepare_network(network, device).eval()


def _forward(network, x: torch.Tensor, device: torch.device, use_amp: bool) -> torch.Tensor:
    if not isinstance(network, OnnxRuntimeNetwork):  # ONNX Runtime takes the plain (NCHW) layout
        x = x.to(device, non_blocking=True)
        x = x.contiguous(memory_format=torch.channels_last) if x.ndim == 4 else x
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=use_amp):
        return network(x).float().cpu()


def _predict_batch(
    batch: LoadedBatch, items, network, bundle, options, device, use_amp, cam, stamp
) -> list[dict]:
    """Rows for one loader batch: errors as recorded, the rest through the network (per item on failure)."""
    rows = {}
    for rec in batch.records:
        row = _base_row(items[rec["index"]], bundle, options, stamp)
        if rec["error"] is not None:
            row["status"], row["reason"] = "error", rec["error"]
        rows[rec["index"]] = row
    good, logits = [], {}
    # each shape's images go through the network together; a failing group is retried one by one
    for images, positions in batch.groups:
        group = [batch.records[p] for p in positions]
        for i, rec in enumerate(group):
            rec["image"] = images[i]  # a view, for Grad-CAM
        good += group
        try:
            out = _forward(network, images, device, use_amp)
            logits.update({r["index"]: out[i] for i, r in enumerate(group)})
        except NETWORK_ERRORS:  # isolate the item the network cannot take
            logger.debug("batch of %d failed; retrying one by one", len(group), exc_info=True)
            for r in group:
                try:
                    logits[r["index"]] = _forward(network, r["image"][None], device, use_amp)[0]
                except NETWORK_ERRORS as exc:
                    rows[r["index"]]["status"] = "error"
                    rows[r["index"]]["reason"] = f"network failed on this input: {_reason(exc)}"
    for rec in good:
        if rec["index"] not in logits:
            continue
        row = rows[rec["index"]]
        try:
            probs = bundle.probabilities(logits[rec["index"]])
            if not torch.isfinite(probs).all():
                raise ValueError("the network produced non-finite outputs")
            if probs.numel() != len(bundle.class_names):
                raise ValueError(
                    f"the network gave {probs.numel()} outputs for {len(bundle.class_names)} classes"
                )
        except NETWORK_ERRORS as exc:  # postprocessing (MONAI re-raises as RuntimeError) or the checks above
            row["status"], row["reason"] = "error", _reason(exc)
            continue
        pred, pred_name = bundle.decide(probs)
        row.update(status="ok", reason="", pred=pred, pred_name=pred_name)
        for name, p in zip(bundle.class_names, probs.tolist(), strict=True):
            row[f"prob_{name}"] = float(p)
        if cam is not None:
            try:
                row["gradcam"] = cam.write(items[rec["index"]], rec["image"], int(torch.argmax(probs)))
            except (OSError, *NETWORK_ERRORS) as exc:  # the prediction stands; say why the overlay is missing
                logger.debug("Grad-CAM of %s failed", row["path"], exc_info=True)
                row["gradcam"], row["reason"] = "", f"no Grad-CAM overlay: {_reason(exc)}"
    return [rows[rec["index"]] for rec in batch.records]


# ---------------------------------------------------------------------------------------------
# Grad-CAM overlays


class _GradCamWriter:
    """Grad-CAM heat maps of the predicted class (``toolkit.evaluation.gradcam``), saved as PNG overlays."""

    def __init__(self, network: torch.nn.Module, output: Path, readable: bool = True):
        # a float32 copy on the CPU, so the hooks GradCAM registers never touch the inference model
        model = copy.deepcopy(network).float().cpu().to(memory_format=torch.contiguous_format).eval()
        self.explainer = Explainer(model)
        self.output = output
        self.readable = (
            readable  # a readable stem of the file name in the overlay's name (not when pseudonymised)
        )

    def write(self, item: InputItem, image: torch.Tensor, class_index: int) -> str:
        """Write the overlay of one preprocessed 2D input (C, H, W); returns its path relative to the output."""
        if image.ndim != 3:
            return ""  # overlays are for 2D inputs
        shown, heatmap = self.explainer.explain(image, class_idx=class_index)
        buffer = io.BytesIO()
        Image.fromarray((255 * overlay(shown, heatmap)).round().astype(np.uint8)).save(buffer, format="PNG")
        # short, unique per input and frame, no separators: see naming.overlay_file_name
        relative = f"{GRADCAM_FOLDER}/{overlay_file_name(item.path, item.frame, self.readable)}"
        atomic_write_bytes(inside(self.output, relative), buffer.getvalue())
        return relative


# ---------------------------------------------------------------------------------------------
# merge + summary (rank 0)


def _finish(
    items: list[InputItem],
    bundle: InferenceBundle,
    options: InferenceOptions,
    processed_now: int,
    already_done: int,
    ignored: Ignored,
) -> RunSummary:
    output = Path(options.output)
    records = read_journals(all_part_paths(output))
    rows = [records[item.key] for item in items if item.key in records]
    missing = len(items) - len(rows)
    csv_path = output / "predictions.csv"
    sr_paths = []
    if options.dicom_sr:  # before the final files: a study without a report says why in its rows
        by_key = {item.key: item for item in items}
        sr_paths, sr_failures = write_study_reports(
            [(by_key[r["key"]], r) for r in rows], output, bundle, anonymise=options.sr_anonymise
        )
        for study, reason in sr_failures.items():  # ``study``: the report's file stem, safe to print
            print(f"cit infer: no DICOM SR for study {study}: {reason}", file=sys.stderr)
        rows = _note_missing_reports(rows, by_key, sr_failures)
    write_final_outputs(rows, output_columns(bundle, options), csv_path, output / "predictions.jsonl")
    counts = Counter(r["status"] for r in rows)
    if missing:
        counts["missing"] = missing
    code = EXIT_RUN_FAILED if missing else EXIT_INPUTS_FAILED if counts.get("error") else EXIT_OK
    summary = RunSummary(dict(counts), processed_now, already_done, ignored, code, csv_path, sr_paths)
    summary.inputs = len(items)
    return summary


def _note_missing_reports(rows: list[dict], by_key: dict, failures: dict[str, str]) -> list[dict]:
    """Rows of DICOM images whose study got no SR, with the reason added to their ``reason`` column."""
    noted = []
    for row in rows:
        item = by_key[row["key"]]
        why = failures.get(uid_file_stem(item.study_instance_uid)) if item.kind == "dicom" else None
        if why and row.get("status") == "ok":
            row = {**row, "reason": "; ".join(filter(None, [row.get("reason"), f"no DICOM SR: {why}"]))}
        noted.append(row)
    return noted


def _report(summary: RunSummary, options: InferenceOptions, started_at: str) -> OperatorSummary:
    """Write ``summary.json`` and print the human summary (``toolkit.inference.operator_summary``)."""
    ignored = summary.ignored
    operator = OperatorSummary(
        mode="folder",
        started=started_at,
        finished=utc_now(),
        inputs=summary.inputs,
        rows=dict(summary.counts),
        processed_now=summary.processed_now,
        done_earlier=summary.already_done,
        ignored=ignored.other + ignored.hidden + len(ignored.earlier_output),
        seconds=round(summary.seconds, 3),
        inputs_per_second=throughput(summary.processed_now, summary.processing_seconds),
        backend=options.backend,
        precision=options.precision,
        exit_code=summary.exit_code,
    )
    write_summary(options.output, operator)
    _log_summary(summary, operator)
    return operator


def _log_summary(summary: RunSummary, operator: OperatorSummary) -> None:
    lines = ["cit infer: " + operator.lines()[0]]
    if summary.ignored:
        lines.append(f"  {summary.ignored} ignored (no row)")
    if summary.counts.get("error"):
        lines.append(f"  see {summary.csv_path} (status 'error', column 'reason') for what failed")
    if summary.counts.get("missing"):
        lines.append(
            "  some inputs have no result (a process stopped early); rerun the same command to finish"
        )
    if summary.sr_paths:
        lines.append(f"  {len(summary.sr_paths)} DICOM SR report(s) in {summary.sr_paths[0].parent}")
    lines.append(
        f"  results: {summary.csv_path} (figures of the run: {summary.csv_path.parent / SUMMARY_NAME})"
    )
    print("\n".join(lines), file=sys.stderr)
