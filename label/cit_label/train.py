"""Train task for an exported classification bundle: labels from the datastore, the bundle's own recipe.

MONAI Label's ``BundleTrainTask`` hands the bundle a segmentation datalist (``{"image", "label": mask
file}``) and reads ``train#trainer`` / ``train#dataset`` ids our configs do not have; a classification
label is a class, not a mask. This task instead:

1. reads each labelled image's class from the datastore: the label's info (``label`` / ``class_name``,
   sent as ``params`` with ``PUT /datastore/label``), or else the text of the label file itself;
2. maps the names to class indices by the served model's class names (``models/model_info.json``),
   case-insensitively; an unknown name fails the run and names the image and the classes;
3. lays the images out as a class-per-folder tree of links and runs the bundle's ``train.json``
   (``python -m monai.bundle run training``) in a subprocess, with the served model's architecture,
   input size, channels and intensity and ``--split#classes`` fixing the class order;
4. on success puts the new ``model.pt`` and ``model_info.json`` beside the served ones (the infer task
   reloads a ``model.pt`` whose time stamp changed) and keeps the run in ``<bundle>/train_runs/<time>``.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.train import TrainTask

logger = logging.getLogger(__name__)

LABEL_KEYS = ("label", "class_name", "class")


def datastore_labels(
    datastore: Datastore, class_names: list[str], tag: str | None = None
) -> list[dict[str, Any]]:
    """``[{"image": path, "label": index, "label_name": name}]`` for every labelled image of ``datastore``."""
    index = {name.lower(): i for i, name in enumerate(class_names)}
    records = []
    for image_id in sorted(datastore.get_labeled_images(label_tag=tag)):
        labels = datastore.get_labels_by_image_id(image_id)
        label_tag = tag if tag in labels else sorted(labels)[0]
        info = datastore.get_label_info(labels[label_tag], label_tag) or {}
        name = next((str(info[k]) for k in LABEL_KEYS if info.get(k) not in (None, "")), None)
        if name is None:
            path = Path(datastore.get_label_uri(labels[label_tag], label_tag))
            name = (
                path.read_text(encoding="utf-8", errors="replace").strip()
                if path.stat().st_size < 1024
                else ""
            )
        if name.strip().lower() not in index:
            raise ValueError(
                f"image {image_id}: label {name!r} (tag {label_tag}) is not a class of the model ({', '.join(class_names)})"
            )
        i = index[name.strip().lower()]
        records.append({"image": datastore.get_image_uri(image_id), "label": i, "label_name": class_names[i]})
    return records


class ClassificationBundleTrainTask(TrainTask):
    def __init__(self, path: str, conf: dict[str, str]):
        self.bundle = Path(path)
        super().__init__(
            f"Train {self.bundle.name} on the datastore's labelled images (the bundle's train.json)"
        )

    def config(self) -> dict[str, Any]:
        return {"max_epochs": 10, "batch_size": 16, "pretrained": "", "label_tag": "final"}

    def model_info(self) -> dict[str, Any]:
        return json.loads((self.bundle / "models" / "model_info.json").read_text())

    def stats(self) -> dict[str, Any]:
        """The last training run, for ``/info/``'s ``train_stats`` (what the Label UI shows): its folder,
        epochs, the best validation key metric (accuracy, or mean AUROC for multi-label models) and its
        epoch, and the training time; ``{}`` before the first run."""
        histories = sorted((self.bundle / "train_runs").glob("*/output/train/training_history.csv"))
        if not histories:
            return {}
        with open(histories[-1], newline="") as f:
            rows = list(csv.DictReader(f))
        metric = next((m for m in ("val_mean_auroc", "val_accuracy") if rows and rows[0].get(m)), None)
        if metric is None:
            return {"run": histories[-1].parents[2].name, "epochs": len(rows)}
        best = max(rows, key=lambda r: float(r[metric]))
        return {
            "run": histories[-1].parents[2].name,
            "epochs": len(rows),
            "best_metric_name": metric,
            "best_metric": float(best[metric]),
            "best_epoch": int(best["epoch"]),
            "last_train_loss": float(rows[-1]["train_loss"]) if rows[-1].get("train_loss") else None,
            "training_seconds": round(sum(float(r.get("epoch_seconds") or 0) for r in rows), 1),
        }

    def __call__(self, request, datastore: Datastore):
        req = {**self.config(), **request}
        info = self.model_info()
        class_names = info["class_names"]
        records = datastore_labels(datastore, class_names, req.get("label_tag") or None)
        if not records:
            raise ValueError("no labelled image in the datastore")
        run = self.bundle / "train_runs" / time.strftime("%Y%m%d-%H%M%S")
        data = run / "data"
        for n, record in enumerate(records):
            folder = data / record["label_name"]
            folder.mkdir(parents=True, exist_ok=True)
            source = Path(record["image"])
            (folder / f"{n:05d}_{source.name}").symlink_to(source.resolve())
        prep = info["preprocessing"]
        overrides = {
            "bundle_root": str(self.bundle),
            "dataset_dir": str(data),
            "ckpt_dir": str(run / "models"),
            "output_dir": str(run / "output"),
            "split#classes": json.dumps(class_names),
            "model_name": info["network"]["name"],
            "channels": info["network"].get("in_channels", prep.get("channels", 3)),
            "image_size": prep["image_size"],
            "max_epochs": int(req["max_epochs"]),
            "batch_size": int(req["batch_size"]),
        }
        for key in ("colour", "intensity"):
            if key in prep:
                overrides[key] = prep[key]
        if req.get("pretrained"):
            overrides["pretrained"] = req["pretrained"]
        command = [
            sys.executable,
            "-m",
            "monai.bundle",
            "run",
            "training",
            "--config_file",
            str(self.bundle / "configs" / "train.json"),
        ]
        for key, value in overrides.items():
            command += [f"--{key}", str(value)]
        logger.info(
            "training %s on %d labelled images: %s", self.bundle.name, len(records), " ".join(command)
        )
        result = subprocess.run(command, cwd=self.bundle, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"training {self.bundle.name} failed (exit {result.returncode}); see {run}")
        trained = json.loads((run / "models" / "model_info.json").read_text())
        if trained["class_names"] != class_names or trained["network"] != info["network"]:
            raise RuntimeError(
                f"the trained model in {run / 'models'} is not the served model's architecture/classes"
            )
        (self.bundle / "models" / "temperature.json").unlink(
            missing_ok=True
        )  # calibrated for the old weights
        for name in (
            "model_info.json",
            "model.pt",
        ):  # weights last: the infer task reloads on model.pt's mtime
            tmp = self.bundle / "models" / f".{name}.tmp"
            shutil.copy2(run / "models" / name, tmp)
            os.replace(tmp, self.bundle / "models" / name)
        return {"images": len(records), "run": str(run), "model": str(self.bundle / "models" / "model.pt")}
