"""Folders of DICOM files (a PACS export): labels from a CSV keyed by a DICOM attribute, or from
class folders; patient id and UIDs from each header."""

from __future__ import annotations

import logging
import re
from pathlib import Path

from toolkit.data.headers import UnreadableImage, dicom_header, dicom_ids
from toolkit.data.sources.base import (
    SourceItems,
    attach_labels,
    integer_classes,
    label_index,
    scan,
    split_from_parts,
    warn_list,
    wrapper_depth,
)
from toolkit.data.sources.csv_manifest import csv_header, read_csv, require_columns

logger = logging.getLogger(__name__)

# DICOM attributes a label CSV may be keyed by (also used to recognise such a CSV in a folder).
DICOM_KEYS = ("AccessionNumber", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "PatientID")


def dicom_label_csv(folder: Path) -> tuple[Path, str] | None:
    """(csv, key) if ``folder`` has a CSV with a ``label`` column keyed by a DICOM attribute."""
    for csv_path in sorted(folder.glob("*.csv")):
        try:
            columns = csv_header(csv_path)
        except ValueError:  # unreadable or empty: not a label table
            continue
        for key in DICOM_KEYS:
            if key in columns and "label" in columns:
                return csv_path, key
    return None


def _label_table(labels_csv: Path, key: str, label_column: str) -> dict[str, str]:
    rows, columns = read_csv(labels_csv)
    require_columns(labels_csv, columns, [key, label_column])
    table = {}
    for row in rows:
        k = (row.get(key) or "").strip()
        if k:
            table[k] = (row.get(label_column) or "").strip()
    return table


def dicom_folder_items(
    root, labels_csv=None, key="AccessionNumber", label_column="label", classes=None
) -> SourceItems:
    """The items of a folder of DICOM files; see :func:`from_dicom_folder`."""
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"DICOM folder not found: {root}")
    table = None
    if labels_csv is not None:
        labels_csv = Path(labels_csv).expanduser().resolve()
        table = _label_table(labels_csv, key, label_column)

    records, not_in_csv = [], []
    for path, kind in scan(root):
        if kind != "dicom":
            continue
        try:
            ds = dicom_header(path)
        except UnreadableImage as err:  # one bad file is reported, never a crash
            logger.warning("skipping unreadable DICOM %s (%s)", path, err.reason)
            continue
        row = {"image": str(path), **dicom_ids(ds)}
        if table is not None:
            value = str(ds.get(key, "") or "").strip()
            if value not in table:
                not_in_csv.append(f"{path} ({key}={value or 'missing'})")
                continue
            row["label_name"] = table[value]
        else:
            parts = path.relative_to(root).parts[:-1]
            split, at = split_from_parts(parts)
            if split:
                row["split"] = split
            row["_folders"] = list(parts[at + 1 :])
        records.append(row)
    warn_list(f"skipping DICOM files whose {key} is not in {labels_csv}", not_in_csv)

    if table is None:
        # Label = class folder (first folder below any split folder, after shared wrapper folders).
        common = wrapper_depth([r["_folders"] for r in records])
        for r in records:
            folders = r.pop("_folders")
            r["label_name"] = folders[common] if len(folders) > common else Path(r["image"]).parent.name

    names = [r["label_name"] for r in records]
    if classes is None and names and all(re.fullmatch(r"\d+", n) for n in names):
        classes = integer_classes([int(n) for n in names], f"{labels_csv or root}: labels")
    labels = label_index(names, classes)
    for r in records:  # integer labels in the CSV name classes by index
        if (
            r["label_name"] not in labels
            and re.fullmatch(r"\d+", r["label_name"])
            and int(r["label_name"]) < len(labels)
        ):
            r["label_name"] = labels[int(r["label_name"])]
    items = attach_labels(records, labels, str(root))
    if not items:
        raise ValueError(f"no labelled DICOM images found under {root}")
    return SourceItems(items, labels, multi_label=False, kind="dicom_folder")


def from_dicom_folder(
    root, labels_csv=None, key="AccessionNumber", label_column="label", classes=None
) -> list[dict]:
    """Items of a folder of DICOM files, recognised by content (extension not needed).

    Labels come from ``labels_csv`` (a column named like the DICOM attribute ``key`` -
    AccessionNumber, StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID, PatientID ... - and
    ``label_column``), or without a CSV from the class folder (as in ``from_class_folders``).
    Items carry ``patient_id`` (PatientID) and ``study_uid`` / ``series_uid`` /
    ``sop_instance_uid`` from the header (read without pixel data). Unreadable or non-image files,
    and files whose key is not in the CSV, are reported and skipped.
    """
    return dicom_folder_items(root, labels_csv, key, label_column, classes).items
