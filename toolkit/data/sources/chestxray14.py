"""NIH ChestX-ray14: ``Data_Entry_2017.csv`` with 14 findings as multi-hot labels and patient ids."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from toolkit.data.sources.base import SourceItems
from toolkit.data.sources.csv_manifest import csv_items

# NIH ChestX-ray14 findings in the order of the NIH release (and CheXNet).
CHESTXRAY14_FINDINGS = [
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
    "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
]  # fmt: skip


def is_chestxray14(columns: Sequence[str]) -> bool:
    """True for the columns of the NIH CSV (``Image Index`` and ``Finding Labels``)."""
    return "Image Index" in columns and "Finding Labels" in columns


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


def chestxray14_items(csv_path, image_dir=None) -> SourceItems:
    """The items of NIH ChestX-ray14; see :func:`from_chestxray14`. Without ``image_dir`` the
    images are looked for in ``images/`` beside the CSV, else in the CSV's folder."""
    csv_path = Path(csv_path).expanduser().resolve()
    if image_dir is None:
        image_dir = csv_path.parent / "images" if (csv_path.parent / "images").is_dir() else csv_path.parent
    image_dir = Path(image_dir).expanduser().resolve()
    if not image_dir.is_dir():
        raise FileNotFoundError(f"ChestX-ray14 image folder not found: {image_dir}")
    found = csv_items(
        csv_path,
        image_column="Image Index",
        label_column="Finding Labels",
        root=image_dir,
        patient_column="Patient ID",
        multi_label_sep="|",
        classes=CHESTXRAY14_FINDINGS,
        negative_labels=("No Finding",),
        image_lookup=_name_index(image_dir),
    )
    return SourceItems(found.items, found.labels, multi_label=True, kind="chestxray14")


def from_chestxray14(csv_path, image_dir) -> list[dict]:
    """Items of NIH ChestX-ray14 (``Data_Entry_2017.csv``): 14 findings as multi-hot labels.

    Findings are in the NIH order (``CHESTXRAY14_FINDINGS``); "No Finding" is all zeros. Images
    are looked up in ``image_dir`` or any folder below it; rows whose image is missing are
    reported (count and first few) and skipped.
    """
    return chestxray14_items(csv_path, image_dir).items
