"""What every source returns, and the helpers several sources share (split names, folder scan,
label indices, short warnings)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from toolkit.data.files import MASK_FOLDERS, file_kind

logger = logging.getLogger(__name__)

SHOW = 5  # how many example names a warning lists
MAX_INTEGER_CLASSES = 1000  # integer labels above this are not class indices (see integer_classes)

# Folder / column values naming a split, case-insensitive.
SPLIT_ALIASES = {
    "train": "training",
    "training": "training",
    "tr": "training",
    "val": "validation",
    "valid": "validation",
    "validation": "validation",
    "dev": "validation",
    "test": "test",
    "testing": "test",
    "ts": "test",
}

# Metadata beside the images is expected and not worth a warning.
_SIDE_SUFFIXES = (".csv", ".tsv", ".json", ".txt", ".md", ".yaml", ".yml", ".xml", ".xlsx", ".pdf", ".html")
_SIDE_NAMES = ("license", "readme", "dicomdir")


@dataclass(frozen=True)
class SourceItems:
    """Datalist items of one source, so ``build_datalist`` treats every format alike.

    ``items``: dicts with ``image`` (absolute path), ``label`` (index into ``labels``, or a
    multi-hot list when ``multi_label``), ``label_name`` and, where the source has them,
    ``patient_id`` and ``split``. ``kind`` names the source format (stored as ``source_kind``);
    ``meta`` says how the source was read (e.g. a label file's columns), stored in the datalist.
    """

    items: list[dict]
    labels: list[str]
    multi_label: bool
    kind: str
    meta: dict = field(default_factory=dict)


def warn_list(message: str, names: Sequence) -> None:
    """One warning with a count and the first few names (thousands of lines would hide it)."""
    if names:
        shown = ", ".join(str(n) for n in names[:SHOW])
        more = f" ... (+{len(names) - SHOW} more)" if len(names) > SHOW else ""
        logger.warning("%s: %d file(s): %s%s", message, len(names), shown, more)


def integer_classes(values: Sequence[int], where: str) -> list[str]:
    """Class names ``"0" .. "max"`` for integer labels read as class indices.

    Refused when the values cannot be indices: more than :data:`MAX_INTEGER_CLASSES` classes, or more
    indices without an image than with one (an accession number, a date or an id in the label
    column would otherwise make a million classes). A few absent indices are warned about.
    """
    present = sorted(set(values))
    top = present[-1]
    absent = top + 1 - len(present)
    if top + 1 > MAX_INTEGER_CLASSES or absent > len(present):
        shown = ", ".join(str(v) for v in present[:SHOW]) + (" ..." if len(present) > SHOW else "")
        raise ValueError(
            f"{where}: integer labels ({shown}) are not class indices 0, 1, ...: they would make {top + 1} "
            f"classes, {absent} of them without an image. If the column is not the label, name the right one "
            "(--label-column); if the numbers name classes, give the names in index order (--classes)"
        )
    if absent:
        missing = [str(i) for i in range(top + 1) if i not in set(present)]
        warn_list(f"{where}: integer labels read as class indices; these classes have no image", missing)
    return [str(i) for i in range(top + 1)]


def split_from_parts(parts: Sequence[str]) -> tuple[str | None, int]:
    """(split name, index of the split folder) for the first split-named folder in ``parts``."""
    for index, part in enumerate(parts):
        split = SPLIT_ALIASES.get(part.lower())
        if split:
            return split, index
    return None, -1


def wrapper_depth(folder_lists: Sequence[Sequence[str]]) -> int:
    """How many leading folders every image shares (root/chest_xray/NORMAL/...): those are
    wrappers, not classes, as long as every image keeps a folder below them."""
    depth = 0
    while (
        folder_lists
        and all(len(f) > depth + 1 for f in folder_lists)
        and len({f[depth] for f in folder_lists}) == 1
    ):
        depth += 1
    return depth


def label_index(names: Sequence[str], classes: Sequence[str] | None) -> list[str]:
    """The label list: ``classes`` as given, else the sorted distinct names."""
    return list(classes) if classes is not None else sorted(set(names))


def attach_labels(rows: list[dict], labels: Sequence[str], source: str) -> list[dict]:
    """Set ``label`` (index into ``labels``) on each row; rows with an unknown class are reported."""
    index = {name: i for i, name in enumerate(labels)}
    lowered = {name.lower(): i for i, name in enumerate(labels)}
    items, unknown = [], []
    for row in rows:
        name = row["label_name"]
        i = index.get(name, lowered.get(name.lower()))
        if i is None:
            unknown.append(f"{row['image']} ({name})")
            continue
        row["label"] = i
        row["label_name"] = labels[i]
        items.append(row)
    warn_list(f"skipping images whose class is not in {list(labels)} ({source})", unknown)
    return items


def scan(root: Path) -> list[tuple[Path, str]]:
    """(path, kind) of every image file below ``root`` (sorted, hidden entries skipped), one pass.

    Other files are reported in one warning, except metadata (CSV, JSON, text, DICOMDIR ...).
    """
    images, others, masks = [], [], []
    for dirpath, dirnames, filenames in os.walk(root):
        masks += [str(Path(dirpath) / d) for d in dirnames if d.lower() in MASK_FOLDERS]
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d.lower() not in MASK_FOLDERS)
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = Path(dirpath) / name
            kind = file_kind(path)
            if kind:
                images.append((path, kind))
            elif not name.lower().endswith(_SIDE_SUFFIXES) and name.lower() not in _SIDE_NAMES:
                others.append(str(path))
    warn_list(f"skipping files that are not images (PNG/JPEG/DICOM/NIfTI) under {root}", others)
    warn_list(f"skipping segmentation-mask folders under {root}", masks)
    return images
