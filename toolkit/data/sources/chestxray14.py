"""NIH ChestX-ray14: ``Data_Entry_2017.csv`` with 14 findings as multi-hot labels and patient ids."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from toolkit.data.sources.base import SourceItems
from toolkit.data.sources.csv_manifest import csv_header, csv_items

logger = logging.getLogger(__name__)

# NIH ChestX-ray14 findings in the order of the NIH release (and CheXNet).
CHESTXRAY14_FINDINGS = [
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
]


# the NIH file's columns, and the same columns as other copies spell them (lower case, underscores)
_IMAGE_COLUMNS = ("image_index", "file", "image", "filename", "path")
OFFICIAL_LISTS = {"training": "train_val_list.txt", "test": "test_list.txt"}
NO_FINDING = "No Finding"


def _normalised(column: str) -> str:
    return column.strip().lower().replace(" ", "_")


def chestxray14_columns(columns: Sequence[str]) -> dict | None:
    """The image / findings / patient columns of a ChestX-ray14 label file, or None for another file.

    Recognised: NIH's ``Image Index`` + ``Finding Labels`` (+ ``Patient ID``), and copies that spell
    them ``finding_labels`` with an image column named ``file`` / ``image`` / ``filename`` / ``path``.
    """
    by_name = {_normalised(c): c for c in columns}
    image = next((by_name[k] for k in _IMAGE_COLUMNS if k in by_name), None)
    if "finding_labels" not in by_name or image is None:
        return None
    return {"image": image, "findings": by_name["finding_labels"], "patient": by_name.get("patient_id")}


def is_chestxray14(columns: Sequence[str]) -> bool:
    """True for a ChestX-ray14 label file (see :func:`chestxray14_columns`)."""
    return chestxray14_columns(columns) is not None


def _name_index(image_dir: Path):
    """Look up image file names anywhere below ``image_dir`` (NIH archives unpack to images_0xx/images/)."""
    cache: dict[str, Path] | None = None

    def lookup(name: str) -> Path | None:
        nonlocal cache
        direct = image_dir / name
        if direct.is_file():
            return direct
        if cache is None:  # walk once, on the first name not found directly
            cache = {}
            for dirpath, _, filenames in os.walk(image_dir):
                for f in filenames:
                    cache.setdefault(f, Path(dirpath) / f)
        return cache.get(Path(name).name)

    return lookup


def chestxray14_items(csv_path, image_dir=None, classes: Sequence[str] | None = None) -> SourceItems:
    """The items of NIH ChestX-ray14; see :func:`from_chestxray14`. Without ``image_dir`` the
    images are looked for in ``images/`` beside the CSV, else in the CSV's folder.

    The official split is kept when NIH's ``train_val_list.txt`` and ``test_list.txt`` lie beside
    the CSV (validation is then carved from train_val by patient).

    ``classes`` (e.g. ``["No Finding", "Hernia", "Pneumonia"]``) frames the rare-finding subset as a
    single-label task: an image is kept when exactly one of these applies to it ("No Finding" =
    none of the 14), and gets that class; images with none or several of them are left out (counted
    in the log). Without ``classes``: the 14 findings, multi-label.
    """
    csv_path = Path(csv_path).expanduser().resolve()
    if image_dir is None:
        image_dir = csv_path.parent / "images" if (csv_path.parent / "images").is_dir() else csv_path.parent
    image_dir = Path(image_dir).expanduser().resolve()
    if not image_dir.is_dir():
        raise FileNotFoundError(f"ChestX-ray14 image folder not found: {image_dir}")
    columns = chestxray14_columns(csv_header(csv_path))
    if columns is None:
        raise ValueError(
            f"{csv_path}: not a ChestX-ray14 label file (needs 'Image Index' and 'Finding Labels')"
        )
    found = csv_items(
        csv_path,
        image_column=columns["image"],
        label_column=columns["findings"],
        root=image_dir,
        patient_column=columns["patient"],
        multi_label_sep="|",
        classes=CHESTXRAY14_FINDINGS,
        negative_labels=(NO_FINDING,),
        image_lookup=_name_index(image_dir),
    )
    items, meta = found.items, {"columns": columns}
    official = _official_split(csv_path.parent)
    if official:
        for item in items:
            split = official.get(Path(item["image"]).name)
            if split:
                item["split"] = split
        meta["official_split"] = list(OFFICIAL_LISTS.values())
        logger.info("%s: official split from %s", csv_path, ", ".join(OFFICIAL_LISTS.values()))
    if classes is None:
        return SourceItems(items, found.labels, multi_label=True, kind="chestxray14", meta=meta)
    return _single_label(csv_path, items, list(classes), meta)


def _official_split(folder: Path) -> dict[str, str]:
    """Image name -> "training" / "test" from NIH's list files, or {} when they are not both there."""
    paths = {split: folder / name for split, name in OFFICIAL_LISTS.items()}
    if not all(p.is_file() for p in paths.values()):
        return {}
    return {
        line.strip(): split
        for split, path in paths.items()
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip()
    }


def _single_label(csv_path: Path, items: list[dict], classes: list[str], meta: dict) -> SourceItems:
    known = {c.lower(): c for c in [*CHESTXRAY14_FINDINGS, NO_FINDING]}
    unknown = [c for c in classes if c.lower() not in known]
    if unknown:
        raise ValueError(
            f"{csv_path}: unknown ChestX-ray14 class(es) {unknown}; known: {list(known.values())}"
        )
    wanted = [known[c.lower()] for c in classes]
    kept, left_out = [], 0
    for item in items:
        present = [CHESTXRAY14_FINDINGS[k] for k, v in enumerate(item["label"]) if v] or [NO_FINDING]
        hits = [c for c in wanted if c in present]
        if len(hits) != 1:
            left_out += 1
            continue
        kept.append({**item, "label": wanted.index(hits[0]), "label_name": hits[0]})
    logger.info(
        "%s: single-label over %s: %d image(s) kept, %d with none or several of them left out",
        csv_path,
        wanted,
        len(kept),
        left_out,
    )
    return SourceItems(
        kept, wanted, multi_label=False, kind="chestxray14", meta={**meta, "left_out": left_out}
    )


def from_chestxray14(csv_path, image_dir) -> list[dict]:
    """Items of NIH ChestX-ray14 (``Data_Entry_2017.csv``): 14 findings as multi-hot labels.

    Findings are in the NIH order (``CHESTXRAY14_FINDINGS``); "No Finding" is all zeros. Images
    are looked up in ``image_dir`` or any folder below it; rows whose image is missing are
    reported (count and first few) and skipped.
    """
    return chestxray14_items(csv_path, image_dir).items
