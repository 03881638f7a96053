"""Ignite handlers the bundles attach to MONAI's engines.

MONAI's ``StatsHandler`` / ``TensorBoardStatsHandler`` log per-epoch numbers but write no table a
person or a report can read back, and ``ClassificationSaver`` writes probabilities without a
header, class names or labels. These two handlers fill those gaps and nothing else.
"""

from __future__ import annotations

import csv
import logging
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from ignite.engine import Engine, Events

from toolkit.engines import is_distributed
from toolkit.evaluation import metrics as evaluation_metrics
from toolkit.evaluation import thresholds
from toolkit.io import atomic_write_csv, float_text

logger = logging.getLogger(__name__)

# first columns of every history; metrics a run adds (mean AUROC, loss terms ...) follow, then "lr"
HISTORY_COLUMNS = ["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy"]


class TrainingHistoryWriter:
    """Keep ``training_history.csv`` (one row per epoch: train/val loss and accuracy, every other metric of
    the trainer and validator, learning rate).

    Attach it to the trainer after ``ValidationHandler`` so the validation metrics of the epoch
    are there. On a resumed run the rows of earlier epochs are kept.
    """

    def __init__(
        self,
        validator: Engine | None,
        path: str | os.PathLike,
        optimizer: torch.optim.Optimizer | None = None,
    ):
        self.validator = validator
        self.path = Path(path)
        self.optimizer = optimizer
        self._lr = None
        self._cpu_start = self._cpu_last = 0.0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._remember_lr)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._stamp_cpu)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._write)

    def _remember_lr(self, engine: Engine) -> None:
        if self.optimizer is not None:
            self._lr = self.optimizer.param_groups[0]["lr"]
        self._cpu_start = self._cpu_last = time.process_time()

    def _stamp_cpu(self, engine: Engine) -> None:
        self._cpu_last = time.process_time()

    def _write(self, engine: Engine) -> None:
        epoch = engine.state.epoch
        metrics = dict(engine.state.metrics)
        if self.validator is not None:
            metrics.update(self.validator.state.metrics)
        # training time of this epoch alone (ignite's timer stops before validation), for time-to-accuracy
        metrics["epoch_seconds"] = engine.state.times.get(Events.EPOCH_COMPLETED.name)
        # CPU time of this process over the epoch's iterations (all threads; not validation): unlike
        # wall time it does not grow when other jobs share the machine
        metrics["epoch_cpu_seconds"] = self._cpu_last - self._cpu_start
        header, rows = self._read()
        extra = [k for k in header[len(HISTORY_COLUMNS) : -1] if k not in HISTORY_COLUMNS]
        extra += sorted(k for k in metrics if k not in HISTORY_COLUMNS and k not in extra)
        header = HISTORY_COLUMNS + extra + ["lr"]
        row = {**metrics, "epoch": epoch, "lr": self._lr}
        kept = [r for r in rows if int(r["epoch"]) < epoch]
        values = [[r.get(k, "") for k in header] for r in kept]
        values.append([epoch] + [_scalar(row.get(k)) for k in header[1:-1]] + [self._lr])
        atomic_write_csv(self.path, header, values)

    def _read(self) -> tuple[list[str], list[dict]]:
        if not self.path.is_file():
            return HISTORY_COLUMNS + ["lr"], []
        with open(self.path, newline="") as f:
            rows = list(csv.DictReader(f))
            return (list(rows[0]) if rows else HISTORY_COLUMNS + ["lr"]), rows


def _scalar(value):
    if value is None:
        return ""
    if isinstance(value, torch.Tensor):
        value = value.item()
    return float(value)


class PredictionWriter:
    """Collect per-image probabilities from an evaluator and write ``predictions.csv``.

    The evaluator must run with ``decollate=False`` and postprocessing that turns ``pred`` into
    probabilities; batches carry ``index`` (see ``toolkit.engines.dataset_items``) which maps
    back to ``records`` for the image path and patient id. With ``write_metrics`` and labels,
    the metrics files of ``toolkit.evaluation.metrics`` are written beside it (``split`` names the
    split they are of in ``metrics.json``).
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        class_names: list[str],
        records: list[dict],
        write_metrics: bool = False,
        multi_label: bool = False,
        filename: str = "predictions.csv",
        thresholds: str | os.PathLike | None = None,
        save_thresholds: str | os.PathLike | None = None,
        split: str | None = None,
    ):
        self.output_dir = Path(output_dir)
        self.class_names = list(class_names)
        self.records = records
        self.write_metrics = write_metrics
        self.multi_label = multi_label
        self.filename = filename
        self.thresholds_file = thresholds
        self.save_thresholds = save_thresholds
        self.split = split
        self.thresholds: np.ndarray | float = 0.5
        self._probs: list[np.ndarray] = []
        self._indices: list[np.ndarray] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _reset(self, engine: Engine) -> None:
        self._probs, self._indices = [], []

    def _collect(self, engine: Engine) -> None:
        pred = engine.state.output["pred"]
        index = engine.state.batch["index"]
        self._probs.append(torch.as_tensor(pred).detach().float().cpu().numpy())
        self._indices.append(torch.as_tensor(index).cpu().numpy())

    def _write(self, engine: Engine) -> None:
        probs, indices = self._gathered()
        if probs is None:  # another rank of a torchrun evaluation: rank 0 writes
            return
        if not len(probs):
            logger.warning("no predictions were made; nothing written")
            return
        records = [self.records[i] for i in indices]
        has_labels = all("label" in r for r in records)
        self._set_thresholds(records, probs, has_labels)
        has_patients = any(r.get("patient_id") for r in records)
        header = ["image"] + (["patient_id"] if has_patients else [])
        if has_labels:
            header += ["label", "label_name"]
        header += ["pred", "pred_name"] + [f"prob_{name}" for name in self.class_names]
        rows = []
        for record, p in zip(records, probs, strict=True):
            row = [record["image"]] + ([record.get("patient_id", "")] if has_patients else [])
            if has_labels:
                row += [_label_text(record["label"]), self._label_name(record["label"])]
            pred = (p >= self.thresholds).astype(int).tolist() if self.multi_label else int(p.argmax())
            row += [_label_text(pred), self._label_name(pred)] + [float_text(v) for v in p]
            rows.append(row)
        path = self.output_dir / self.filename
        atomic_write_csv(path, header, rows)
        logger.info("wrote %d predictions to %s", len(rows), path)
        if self.write_metrics and has_labels:
            self._write_metrics(records, probs)

    def _set_thresholds(self, records: list[dict], probs: np.ndarray, has_labels: bool) -> None:
        """Multi-label: per-class thresholds chosen here (``save_thresholds``, on validation) or read from
        ``thresholds`` when that file exists; 0.5 otherwise."""
        if not self.multi_label:
            return
        chosen = None
        if self.save_thresholds and has_labels:
            chosen = thresholds.choose_thresholds([r["label"] for r in records], probs, self.class_names)
            thresholds.save_thresholds(chosen, self.save_thresholds, len(records))
        elif self.thresholds_file and Path(self.thresholds_file).is_file():
            chosen = thresholds.load_thresholds(self.thresholds_file)
            logger.info("per-class thresholds from %s", self.thresholds_file)
        self.thresholds = thresholds.threshold_vector(chosen, self.class_names) if chosen else 0.5

    def _gathered(self) -> tuple[np.ndarray | None, np.ndarray | None]:
        """This process's predictions, or under DDP every rank's on rank 0 (``None`` elsewhere).

        The evaluation sampler pads nothing, so each item comes from exactly one rank; items are
        put back in datalist order, so a torchrun evaluation writes the same file as one process.
        """
        probs = np.concatenate(self._probs) if self._probs else np.zeros((0, len(self.class_names)))
        indices = np.concatenate(self._indices) if self._indices else np.zeros(0, dtype=int)
        if not is_distributed():
            return probs, indices
        parts = [None] * dist.get_world_size()
        dist.all_gather_object(parts, (probs, indices))
        if dist.get_rank() != 0:
            return None, None
        probs = np.concatenate([p for p, _ in parts])
        indices = np.concatenate([i for _, i in parts])
        order = np.argsort(indices, kind="stable")
        return probs[order], indices[order]

    def _label_name(self, label) -> str:
        if isinstance(label, (list, tuple, np.ndarray)):
            return "|".join(n for n, v in zip(self.class_names, label, strict=True) if v)
        return self.class_names[int(label)]

    def _write_metrics(self, records: list[dict], probs: np.ndarray) -> None:
        labels = np.asarray([r["label"] for r in records])
        if self.multi_label:
            result = evaluation_metrics.multilabel_metrics(labels, probs, self.class_names, self.thresholds)
        else:
            result = evaluation_metrics.classification_metrics(labels, probs, self.class_names)
        if self.split:
            result["split"] = self.split
        paths = evaluation_metrics.write_metrics(result, self.output_dir)
        if "accuracy" in result:
            logger.info("%s accuracy %.4f on %d images", self.split or "", result["accuracy"], len(records))
        logger.info("metrics written: %s", ", ".join(str(p) for p in paths.values()))


def _label_text(label) -> str:
    if isinstance(label, (list, tuple, np.ndarray)):
        return "|".join(str(int(v)) for v in label)
    return str(int(label))
