"""CSV manifests: one row per image, with image path, label and optionally patient and split columns."""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Callable
from pathlib import Path

from toolkit.data.sources.base import SPLIT_ALIASES, SourceItems, warn_list

# Column names that hold the image path / label / patient in manifests met in the wild, most
# specific first; ``manifest_items`` takes the first one present.
IMAGE_COLUMNS = ("image", "image_path", "filepath", "file_path", "path", "filename", "file")
LABEL_COLUMNS = ("label", "class", "class_name", "diagnosis", "target", "category")
PATIENT_COLUMNS = ("patient_id", "PatientID", "patient", "Patient ID")

_CSV_ERRORS = (OSError, UnicodeDecodeError, csv.Error)


def read_csv(csv_path: Path) -> tuple[list[dict], list[str]]:
    """(rows, column names) of a CSV with a header row (a UTF-8 byte-order mark is ignored)."""
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            columns = reader.fieldnames or []
    except _CSV_ERRORS as err:
        raise ValueError(f"cannot read CSV {csv_path}: {err}") from err
    if not columns:
        raise ValueError(f"CSV {csv_path} is empty (no header row)")
    return rows, columns


def csv_header(csv_path: Path) -> list[str]:
    """The column names of a CSV (its first row only); ``ValueError`` if unreadable or empty."""
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            columns = next(csv.reader(f), [])
    except _CSV_ERRORS as err:
        raise ValueError(f"cannot read CSV {csv_path}: {err}") from err
    if not columns:
        raise ValueError(f"CSV {csv_path} is empty (no header row)")
    return columns


def require_columns(csv_path, columns, wanted) -> None:
    """``ValueError`` naming the missing columns (``None`` entries in ``wanted`` are optional)."""
    missing = [c for c in wanted if c and c not in columns]
    if missing:
        raise ValueError(f"CSV {csv_path} has no column(s) {missing}; columns are {columns}")


def csv_items(
    csv_path,
    image_column="image",
    label_column="label",
    root=None,
    patient_column=None,
    multi_label_sep=None,
    classes=None,
    split_column=None,
    negative_labels=(),
    image_lookup: Callable[[str], Path | None] | None = None,
) -> SourceItems:
    """The items of a CSV manifest; see :func:`from_csv`.

    ``negative_labels`` (multi-label) name "no class" values such as "No Finding";
    ``image_lookup`` finds an image by the CSV's value where a plain join with ``root`` does not.
    """
    csv_path = Path(csv_path).expanduser().resolve()
    rows, columns = read_csv(csv_path)
    require_columns(csv_path, columns, [image_column, label_column, patient_column, split_column])
    base = Path(root).expanduser().resolve() if root is not None else csv_path.parent
    multi = multi_label_sep is not None
    negatives = {n.lower() for n in negative_labels}

    def names_of(row):
        value = (row.get(label_column) or "").strip()
        if not multi:
            return value
        return [
            n.strip()
            for n in value.split(multi_label_sep)
            if n.strip() and n.strip().lower() not in negatives
        ]

    all_names = [names_of(r) for r in rows]
    if classes is not None:
        labels = list(classes)
    elif multi:
        labels = sorted({n for names in all_names for n in names})
    elif all_names and all(re.fullmatch(r"-?\d+", n) for n in all_names if n):
        labels = [str(i) for i in range(max(int(n) for n in all_names if n) + 1)]
    else:
        labels = sorted({n for n in all_names if n})
    index = {n: i for i, n in enumerate(labels)}
    lowered = {n.lower(): i for i, n in enumerate(labels)}

    def index_of(name):
        if name in index:
            return index[name]
        if name.lower() in lowered:
            return lowered[name.lower()]
        if re.fullmatch(r"\d+", name) and int(name) < len(labels):
            return int(name)
        return None

    items, missing, bad_label = [], [], []
    for line, (row, names) in enumerate(zip(rows, all_names, strict=True), start=2):
        rel = (row.get(image_column) or "").strip()
        if not rel:
            bad_label.append(f"line {line}: empty {image_column}")
            continue
        path = image_lookup(rel) if image_lookup else None
        if path is None:
            path = Path(rel) if os.path.isabs(rel) else base / rel
        if not path.is_file():
            missing.append(str(path))
            continue
        item = {"image": str(path.resolve())}
        if multi:
            unknown = [n for n in names if index_of(n) is None]
            if unknown:
                bad_label.append(f"line {line}: unknown label(s) {unknown}")
                continue
            hot = [0] * len(labels)
            for n in names:
                hot[index_of(n)] = 1
            item["label"], item["label_name"] = hot, [labels[i] for i, v in enumerate(hot) if v]
        else:
            i = index_of(names) if names else None
            if i is None:
                bad_label.append(f"line {line}: label {names!r} not in {labels}")
                continue
            item["label"], item["label_name"] = i, labels[i]
        if patient_column and (row.get(patient_column) or "").strip():
            item["patient_id"] = row[patient_column].strip()
        if split_column:
            split = SPLIT_ALIASES.get((row.get(split_column) or "").strip().lower())
            if split:
                item["split"] = split
        items.append(item)
    warn_list(f"{csv_path}: skipping rows whose image file is missing", missing)
    warn_list(f"{csv_path}: skipping rows with a bad label", bad_label)
    if not items:
        raise ValueError(f"no usable rows in {csv_path} (images resolved against {base})")
    return SourceItems(items, labels, multi_label=multi, kind="csv")


def manifest_items(csv_path, classes=None) -> SourceItems:
    """The items of a CSV manifest whose columns are recognised by name: image and label are the
    first of ``IMAGE_COLUMNS`` / ``LABEL_COLUMNS`` present, patient of ``PATIENT_COLUMNS``, and a
    ``split`` column is used when there is one."""
    columns = csv_header(Path(csv_path).expanduser().resolve())
    return csv_items(
        csv_path,
        image_column=next((c for c in IMAGE_COLUMNS if c in columns), "image"),
        label_column=next((c for c in LABEL_COLUMNS if c in columns), "label"),
        patient_column=next((c for c in PATIENT_COLUMNS if c in columns), None),
        classes=classes,
        split_column="split" if "split" in columns else None,
    )


def from_csv(
    csv_path,
    image_column="image",
    label_column="label",
    root=None,
    patient_column=None,
    multi_label_sep=None,
    classes=None,
    split_column=None,
) -> list[dict]:
    """Items of a CSV manifest (one row per image).

    Relative image paths are resolved against ``root`` (default: the CSV's folder). Labels are
    class names or indices; ``classes`` fixes the order (default: sorted names, or 0..max for
    integer labels). With ``multi_label_sep`` (e.g. ``"|"``) a row may name several classes and
    ``label`` is a multi-hot list. Rows whose image is missing are reported and skipped.
    """
    return csv_items(
        csv_path, image_column, label_column, root, patient_column, multi_label_sep, classes, split_column
    ).items
