"""Class-per-folder trees, optionally under split folders: ``root/[.../]{train,val,test}/<class>/...``."""

from __future__ import annotations

import logging
from pathlib import Path

from toolkit.data.files import find_image_files
from toolkit.data.headers import UnreadableImage, check_image, dicom_ids
from toolkit.data.sources.base import (
    SourceItems,
    attach_labels,
    label_index,
    scan,
    split_from_parts,
    warn_list,
    wrapper_depth,
)
from toolkit.data.sources.presets import LABEL_PRESETS, PATIENT_PRESETS, resolve_preset

logger = logging.getLogger(__name__)


def class_folder_items(root, classes=None, label_from_name=None, patient_from_name=None) -> SourceItems:
    """The items of a class-per-folder tree; see :func:`from_class_folders`."""
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {root}")
    if isinstance(label_from_name, str):
        label_fn, preset_classes = resolve_preset(label_from_name, LABEL_PRESETS, "label_from_name")
        classes = classes if classes is not None else preset_classes
    else:  # a callable, or None / False: the folder names are the classes
        label_fn = label_from_name or None
    patient_fn = resolve_preset(patient_from_name, PATIENT_PRESETS, "patient_from_name")

    records = []
    for path, kind in scan(root):
        try:
            header = check_image(path, kind)
        except UnreadableImage as err:  # one bad file is reported, never a crash
            logger.warning("skipping unreadable image %s (%s)", path, err.reason)
            continue
        parts = path.relative_to(root).parts[:-1]
        split, split_at = split_from_parts(parts)
        records.append((path, split, list(parts[split_at + 1 :]), header))

    # With a name parser every folder may be a wrapper; otherwise skip the ones all images share.
    common = wrapper_depth([r[2] for r in records]) if label_fn is None else 0
    lowered = {c.lower(): c for c in classes} if classes is not None else {}
    rows, no_class = [], []
    for path, split, folders, header in records:
        if label_fn is not None:
            name = label_fn(str(path))
        else:
            name = folders[common] if len(folders) > common else None
            if lowered and name is not None:
                # With given classes, the class is the first folder that names one (case-insensitive).
                name = next((lowered[f.lower()] for f in folders if f.lower() in lowered), name)
        if not name:
            no_class.append(str(path))
            continue
        row = {"image": str(path), "label_name": str(name)}
        if header is not None:
            row.update(dicom_ids(header))
        if patient_fn is not None:
            pid = patient_fn(str(path))
            if pid:
                row["patient_id"] = str(pid)
        if split:
            row["split"] = split
        rows.append(row)
    warn_list("skipping images with no class (no class folder / name not recognised)", no_class)

    labels = label_index([r["label_name"] for r in rows], classes)
    items = attach_labels(rows, labels, str(root))
    if not items:
        hint = (
            ": the images sit directly in it; put each class in its own folder (<folder>/<class>/...) or pass "
            "a label file (CSV) naming them"
            if records and not rows and label_fn is None
            else ""
        )
        raise ValueError(f"no labelled images found under {root}{hint}")
    return SourceItems(items, labels, multi_label=False, kind="class_folders")


def tree_classes(root) -> dict[str, int]:
    """Images per class name the folder tree gives (class folders as :func:`class_folder_items`
    finds them, from the paths only: no file is opened)."""
    root = Path(root)
    folder_lists = []
    for path in find_image_files(root):
        parts = path.relative_to(root).parts[:-1]
        _, split_at = split_from_parts(parts)
        folder_lists.append(list(parts[split_at + 1 :]))
    common = wrapper_depth(folder_lists)
    counts: dict[str, int] = {}
    for folders in folder_lists:
        if len(folders) > common:
            counts[folders[common]] = counts.get(folders[common], 0) + 1
    return counts


def from_class_folders(root, classes=None, label_from_name=None, patient_from_name=None) -> list[dict]:
    """Items of a class-per-folder tree, optionally under split folders at any depth.

    ``root/[.../]{train,val,test}/<class>/.../image`` or ``root/<class>/.../image``; split folders
    (train/training, val/validation, test/testing, any case) set ``split``. The class is the first
    folder below the split folder (or below ``root``, after wrapper folders every image shares).
    ``classes`` fixes the label order (default: sorted class names). ``label_from_name`` (callable
    ``path -> class name`` or preset ``"kermany_3class"``) and ``patient_from_name`` (callable or
    preset ``"kermany"``) read labels / patient ids from file names. DICOM files also take
    ``patient_id`` and UIDs from their header. Unreadable and non-image files are skipped with a
    warning.
    """
    return class_folder_items(root, classes, label_from_name, patient_from_name).items
