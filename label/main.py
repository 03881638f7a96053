"""MONAI Label app serving this project's classification bundles (see label/README.md).

Started by MONAI Label, in the virtualenv made by ``label/setup_env.sh``::

    label/.venv/bin/monailabel start_server --app label --studies IMAGES_DIR \\
        --conf models resnet18_brain_ct --conf bundles_dir DIR --host 127.0.0.1 --port 8000

``bundles_dir`` (default ``label/model``, or ``$CIT_LABEL_BUNDLES``) holds exported bundles, one folder
each, as ``cit export --format bundle --out <bundles_dir>/<name>`` writes them; ``models`` names the
ones to serve (comma-separated, or ``all``, the default). Each bundle becomes one infer task (and,
with ``--conf train true``, one train task) named after its folder. A bundle folder is code: one whose
configs hold anything this toolkit's own bundles do not is refused at start-up unless
``--conf trust_bundles true`` (or ``CIT_TRUST_BUNDLE=1``; :mod:`toolkit.bundle.trust`).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.train import TrainTask

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # MONAI Label loads this file by path

from cit_label.infer import ClassificationBundleInferTask  # noqa: E402

from toolkit.bundle.trust import check_bundle  # noqa: E402

logger = logging.getLogger(__name__)

APP_DIR = Path(__file__).resolve().parent


def bundle_folders(bundles_dir: str | os.PathLike, models: str | None) -> dict[str, Path]:
    """The bundles to serve: ``{name: folder}`` for ``models`` (comma-separated, ``all`` or empty: every
    folder of ``bundles_dir`` holding ``configs/inference.json``). An unknown name is an error naming the
    folders that are there, so a typo does not start a server without the model."""
    root = Path(bundles_dir)
    available = (
        {p.name: p for p in sorted(root.iterdir()) if (p / "configs" / "inference.json").is_file()}
        if root.is_dir()
        else {}
    )
    wanted = [m.strip() for m in (models or "all").split(",") if m.strip()]
    if not wanted or wanted == ["all"]:
        if not available:
            raise ValueError(
                f"no bundle in {root} (export one: cit export --format bundle --out {root}/<name>)"
            )
        return available
    missing = [m for m in wanted if m not in available]
    if missing:
        raise ValueError(
            f"bundle(s) {', '.join(missing)} not found in {root}; there: {', '.join(available) or 'none'}"
        )
    return {m: available[m] for m in wanted}


class ClassificationApp(MONAILabelApp):
    def __init__(self, app_dir, studies, conf):
        self.bundles_dir = Path(
            conf.get("bundles_dir") or os.environ.get("CIT_LABEL_BUNDLES") or APP_DIR / "model"
        )
        self.bundles = bundle_folders(self.bundles_dir, conf.get("models"))
        trust = str(conf.get("trust_bundles", "false")).lower() in ("true", "1", "yes")
        for folder in self.bundles.values():  # a bundle folder is code: refuse code ours do not hold
            check_bundle(folder, trust=trust)
        logger.info("serving bundles %s from %s", ", ".join(self.bundles), self.bundles_dir)
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="clinical-imaging-toolkit classification",
            description="Image classification with the clinical-imaging-toolkit bundles",
            version="0.1.0",
        )

    def init_infers(self) -> dict[str, InferTask]:
        infers: dict[str, InferTask] = {}
        for name, folder in self.bundles.items():
            task = ClassificationBundleInferTask(str(folder), self.conf)
            if not task.is_valid():
                raise ValueError(
                    f"bundle {name} in {folder} cannot be served (no models/model.pt or model.ts)"
                )
            infers[name] = task
        return infers

    def init_trainers(self) -> dict[str, TrainTask]:
        if str(self.conf.get("train", "false")).lower() not in ("true", "1", "yes"):
            return {}
        from cit_label.train import ClassificationBundleTrainTask

        return {
            name: ClassificationBundleTrainTask(str(folder), self.conf)
            for name, folder in self.bundles.items()
        }
