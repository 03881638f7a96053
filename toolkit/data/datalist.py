"""Datalist files: the decathlon-style JSON described in docs/architecture.md, and
``build_datalist``, the single entry point bundles call to make one from a data set.

Reading each source format is the job of ``toolkit.data.sources``; this module picks the source,
keeps published splits, splits the rest by patient and writes the JSON. The ``from_*`` builders
and ``CHESTXRAY14_FINDINGS`` are re-exported here, where they used to live.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from toolkit.data.files import file_kind, find_image_files
from toolkit.data.sources import (
    CHESTXRAY14_FINDINGS,
    SourceItems,
    chestxray14_items,
    class_folder_items,
    dicom_folder_items,
    from_chestxray14,
    from_class_folders,
    from_csv,
    from_dicom_folder,
    from_medmnist,
    manifest_items,
    medmnist_items,
)
from toolkit.data.sources.base import SHOW
from toolkit.data.sources.chestxray14 import is_chestxray14
from toolkit.data.sources.class_folders import tree_classes
from toolkit.data.sources.csv_manifest import TABLE_SUFFIXES, csv_header, resolve_column
from toolkit.data.sources.dicom_folder import dicom_label_csv
from toolkit.data.sources.registry import (
    TABLE_OPTIONS,
    SourceOptions,
    given_options,
    options_for,
    register_source,
    registered_sources,
    source_for,
)
from toolkit.data.splits import (
    COLUMN_GROUP,
    SPLIT_GROUP,
    SPLIT_NAMES,
    check_no_leakage,
    class_counts,
    combine_groups,
    parse_ratios,
    split_items,
)
from toolkit.io import atomic_write_json

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# datalist files


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value


def _validate_labels(where: str, labels: Sequence[str]) -> None:
    """Class names become CSV columns (``prob_<name>``), DICOM SR text and bundle config values: refuse
    duplicates, control characters and MONAI's config syntax (a leading ``$``, ``%`` or ``@``)."""
    problems = []
    seen: dict[str, str] = {}
    for name in labels:
        if not name.strip():
            problems.append(f"{name!r} is empty")
        elif any(ord(c) < 32 or ord(c) == 127 for c in name):
            problems.append(f"{name!r} holds a control character")
        elif name[0] in "$%@":
            problems.append(
                f"{name!r} starts with {name[0]!r}, which MONAI's configs read as code or a reference"
            )
        key = name.strip().lower()
        if key in seen:
            problems.append(f"{name!r} and {seen[key]!r} are the same class name")
        seen.setdefault(key, name)
    if problems:
        raise ValueError(
            f"{where}: class names: {'; '.join(problems)} (rename the classes, e.g. with --classes)"
        )


def _validate_items(
    where: str, splits: Mapping[str, Sequence[dict]], labels: Sequence[str], multi_label: bool
):
    for split, items in splits.items():
        for n, item in enumerate(items):
            if not isinstance(item, Mapping) or "image" not in item or "label" not in item:
                raise ValueError(f"{where}: {split}[{n}] needs 'image' and 'label': {item!r}")
            label = item["label"]
            if multi_label:
                if not isinstance(label, (list, tuple)) or len(label) != len(labels):
                    raise ValueError(
                        f"{where}: {split}[{n}] label must be a multi-hot list of {len(labels)}: {label!r}"
                    )
            elif (
                isinstance(label, bool)
                or not isinstance(label, (int, np.integer))
                or not 0 <= label < len(labels)
            ):
                raise ValueError(
                    f"{where}: {split}[{n}] label must be an int in 0..{len(labels) - 1}: {label!r}"
                )


def save_datalist(
    path, splits: Mapping[str, Sequence[dict]], labels: Sequence[str], multi_label=False, **meta
) -> Path:
    """Write a decathlon-style datalist JSON atomically and return its path.

    ``splits`` maps split names (training / validation / test / ...) to items; image paths below
    the JSON's folder are written relative to it. ``meta`` (name, description, seed, ratios, ...)
    is stored at the top level.
    """
    path = Path(path).expanduser().resolve()
    labels = [str(n) for n in labels]
    _validate_labels(str(path), labels)
    _validate_items(str(path), splits, labels, multi_label)
    base = path.parent
    doc = {**_jsonable(meta), "labels": labels, "multi_label": bool(multi_label)}
    for split, items in splits.items():
        out = []
        for item in items:
            item = _jsonable(dict(item))
            if isinstance(item["image"], list):
                item["image"] = [_relative(p, base) for p in item["image"]]
            else:
                item["image"] = _relative(item["image"], base)
            out.append(item)
        doc[split] = out
    return atomic_write_json(path, doc)


def _relative(image: str, base: Path) -> str:
    """``image`` relative to ``base`` (POSIX separators) when it lies below it, else unchanged."""
    path = Path(image)
    if path.is_absolute() and path.resolve().is_relative_to(base):
        return path.resolve().relative_to(base).as_posix()
    return str(image)


def split_keys(doc: Mapping) -> list[str]:
    """Names of the item lists in a datalist document (training, validation, test, ...)."""
    return [
        k
        for k, v in doc.items()
        if isinstance(v, list) and k != "labels" and all(isinstance(i, dict) for i in v)
    ]


def load_datalist(path) -> dict:
    """Read a datalist JSON; ``image`` paths are made absolute against the file's folder.

    Only ``image`` is resolved (as ``monai.data.load_decathlon_datalist`` does for it): MONAI's
    loader also joins *any* other string that happens to name an existing path, which would
    silently change e.g. a ``patient_id`` equal to a folder name. Raises ``ValueError`` naming the
    file for malformed JSON or a missing ``labels`` / split list.
    """
    path = Path(path).expanduser().resolve()
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"datalist not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"datalist {path} is not valid JSON: {err}") from err
    if not isinstance(doc, dict):
        raise ValueError(f"datalist {path} must be a JSON object, got {type(doc).__name__}")
    if not isinstance(doc.get("labels"), list):
        raise ValueError(f"datalist {path} has no 'labels' list")
    splits = split_keys(doc)
    if not splits:
        raise ValueError(f"datalist {path} has no split lists (training / validation / test)")
    multi = bool(doc.get("multi_label", False))
    _validate_items(str(path), {k: doc[k] for k in splits}, doc["labels"], multi)
    for key in splits:
        for item in doc[key]:
            image = item["image"]
            if isinstance(image, list):
                item["image"] = [os.path.normpath(os.path.join(path.parent, p)) for p in image]
            else:
                item["image"] = os.path.normpath(os.path.join(path.parent, image))
    return doc


# ---------------------------------------------------------------------------------------------
# build_datalist


# A file with one of these suffixes directly in a data folder is taken for its label file.
FOLDER_LABEL_SUFFIXES = (".csv", ".tsv", ".tab")
# Spreadsheets: read as label files, whose reader asks for a CSV export.
SPREADSHEET_SUFFIXES = (".xlsx", ".xls", ".xlsm", ".ods")


def label_tables(folder: Path) -> list[Path]:
    """The label files (CSV / TSV) directly in ``folder``, sorted."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in FOLDER_LABEL_SUFFIXES
    )


def read_source(source: Path, out_path: Path, **options) -> SourceItems:
    """The items of ``source``, read by the registered source that claims it
    (``toolkit.data.sources.registry``; the built-in ones are below), with ``options`` (fields of
    its options dataclass, :class:`SourceOptions` for the built-in ones).

    Label-file options (``image_column``, ``label_column``, ``patient_column``, ``split_column``,
    ``image_pattern``) given for a file that is not a label file are refused. ``ValueError`` when
    every image would get the same class, unless ``classes`` or ``allow_single_class`` says one
    class is meant.
    """
    given = given_options(options, "read_source()")
    table = {k: v for k in TABLE_OPTIONS if (v := given.get(k))}
    suffix = source.suffix.lower()
    if table and not source.is_dir() and suffix not in TABLE_SUFFIXES:
        raise ValueError(
            f"{source}: {', '.join(sorted(table))} apply to a label file (CSV / TSV) or a "
            f"folder holding one, not to a {suffix or 'file without extension'}"
        )
    reader = source_for(source)
    if reader is None:
        what = [s.describes for s in reversed(registered_sources())] + ["datalist .json"]
        raise ValueError(
            f"unsupported dataset source {source}: expected {', '.join(what[:-1])} or {what[-1]}"
        )
    found = reader.read(source, out_path, options_for(reader, given, source))
    _check_classes(source, found, given.get("classes"), given.get("allow_single_class", False))
    return found


@register_source("folder", claims=Path.is_dir, describes="a folder")
def _folder_items(source: Path, out_path: Path, options: SourceOptions) -> SourceItems:
    """A DICOM export when a ``*.csv`` in it is keyed by a DICOM attribute and every image is DICOM;
    read through the one label file (CSV / TSV) directly in it when label-file options are given,
    or when its folder tree would give fewer than two classes (said in the log); else a
    class-per-folder tree."""
    classes, label_from_name, table = options.classes, options.label_from_name, options.table
    keyed = dicom_label_csv(source)
    if not table and keyed and all(file_kind(p) == "dicom" for p in find_image_files(source)):
        return dicom_folder_items(source, keyed[0], keyed[1], classes=classes)
    tables = label_tables(source)
    if table:
        if len(tables) != 1:
            found = f"{len(tables)}: {', '.join(t.name for t in tables)}" if tables else "none"
            raise ValueError(
                f"{source}: {', '.join(sorted(table))} need one label file (CSV / TSV) in the folder; "
                f"found {found}. Pass the label file itself as the source"
            )
        logger.info("%s: labels from %s", source, tables[0])
        return manifest_items(tables[0], classes, root=source, skip_missing=options.skip_missing, **table)
    chestxray14 = [t for t in tables if is_chestxray14(csv_header(t))]
    if not table and label_from_name is None and len(chestxray14) == 1 and len(tree_classes(source)) < 2:
        logger.info("%s: ChestX-ray14 labels from %s", source, chestxray14[0].name)
        return chestxray14_items(chestxray14[0], image_dir=source, classes=classes)
    if tables and label_from_name is None and classes is None and not options.allow_single_class:
        tree = tree_classes(source)
        if len(tree) < 2:
            if len(tables) > 1:
                raise ValueError(
                    f"{source}: the folder tree gives {len(tree)} class(es) {sorted(tree)} and the folder holds "
                    f"{len(tables)} label files ({', '.join(t.name for t in tables)}): pass the one to use as the source"
                )
            logger.info(
                "%s: the folder tree gives %d class(es) %s; labels from %s",
                source,
                len(tree),
                sorted(tree),
                tables[0].name,
            )
            return manifest_items(tables[0], classes, root=source, skip_missing=options.skip_missing)
        logger.info(
            "%s: labels from the %d class folders; %s is not used (name its columns, e.g. "
            "--label-column, to use it)",
            source,
            len(tree),
            ", ".join(t.name for t in tables),
        )
    return class_folder_items(source, classes, label_from_name, options.patient_from_name)


@register_source(
    "label_file",
    claims=lambda p: not p.is_dir() and p.suffix.lower() in (*TABLE_SUFFIXES, *SPREADSHEET_SUFFIXES),
    describes="a label file (.csv / .tsv)",
)
def _label_file_items(source: Path, out_path: Path, options: SourceOptions) -> SourceItems:
    """NIH ChestX-ray14 when the file has its columns (and no label-file option is given), else a
    manifest read by ``manifest_items``."""
    if not options.table and is_chestxray14(csv_header(source)):
        return chestxray14_items(source, classes=options.classes)
    return manifest_items(source, options.classes, skip_missing=options.skip_missing, **options.table)


@register_source("medmnist", claims=lambda p: not p.is_dir() and p.suffix.lower() == ".npz", describes=".npz")
def _medmnist_items(source: Path, out_path: Path, options: SourceOptions) -> SourceItems:
    """MedMNIST arrays, exported as image files beside the datalist (``<stem>_images``)."""
    return medmnist_items(source, out_path.parent / f"{source.stem}_images", options.classes)


def _check_classes(source: Path, found: SourceItems, classes, allow_single_class: bool) -> None:
    """One class for every image is a mistake (a folder name taken as the class) unless meant."""
    if found.multi_label or classes is not None or allow_single_class:
        return
    present = sorted({item["label_name"] for item in found.items})
    if len(present) >= 2:
        return
    name = present[0] if present else "?"
    if found.kind in ("class_folders", "dicom_folder"):
        where = (
            f"the folder tree gives one class ({name!r}, {len(found.items)} images): put each class in its own "
            "folder or add a label file (CSV) naming the images"
        )
    else:
        where = f"every row has the same label ({name!r}, {len(found.items)} images)"
    raise ValueError(
        f"{source}: {where}; pass classes (--classes) or allow_single_class (--allow-single-class) "
        "if one class is meant"
    )


def build_datalist(
    source,
    out_path,
    ratios=None,
    val_fraction=0.15,
    seed=0,
    group_key="patient_id",
    *,
    grouper: Callable[[list[dict], list[str]], dict] | None = None,
    group_column: str | None = None,
    **options,
) -> Path:
    """Build (or validate) the datalist JSON for ``source`` and return its path.

    ``source``: an existing datalist ``.json`` (validated and returned as is), a class-per-folder
    tree, a folder holding images and one label file (used when the tree gives one class or a
    column option is given), a DICOM folder with a ``*.csv`` keyed by a DICOM attribute, a label
    file (CSV / TSV / Excel CSV; NIH ``Data_Entry_2017.csv`` recognised), or a MedMNIST ``.npz``.

    ``options``: how the source is read, the fields of ``sources.registry.SourceOptions`` (or of a
    registered source's own options): ``classes``, ``label_from_name``, ``patient_from_name``.
    Label files: ``image_column``, ``label_column`` (several = one 0/1 column per class,
    multi-label), ``patient_column``, ``split_column`` name the columns (default: found by name,
    see ``sources.csv_manifest``); ``image_pattern`` (``"head_ct/{id:03d}.png"``) builds the image
    path from a row; ``group_column`` names a column (LC25000's ``source_tile``) whose value a split
    keeps in one part, like and as well as a patient id (item key ``group``); ``skip_missing`` skips
    rows whose image is missing (default: an error).
    ``allow_single_class``: a source whose images all get one class is accepted (default: an
    error, unless ``classes`` is given).

    Published splits are kept; with training and test but no validation, validation is carved
    from training by patient (``val_fraction``). Without published splits, items are split by
    ``ratios`` (default 80/10/10), stratified and grouped by ``group_key``. No patient is in two
    of the splits made here. Deterministic for a given ``seed``. The counts per split and class
    are logged.

    ``grouper(items, labels) -> summary`` (``toolkit.data.audit.near_duplicate_grouper``): before
    splitting, it clusters the images by patient and by duplicate / near-duplicate image as ``cit
    audit`` finds them, and whole clusters are split (item key ``split_group``), so no cluster spans
    two of the splits made here; clusters spanning published splits are kept as published and
    counted. The summary (clusters, images grouped) is logged and stored as ``near_duplicate_grouping``.
    """
    source = Path(source).expanduser().resolve()
    out_path = Path(out_path).expanduser().resolve()
    read_source_args = given_options(options, "build_datalist()")
    if not source.exists():
        raise FileNotFoundError(f"dataset source not found: {source}")
    if source.is_file() and source.suffix.lower() == ".json":
        return _existing_datalist(source, read_source_args, group_column, grouper)

    found = read_source(source, out_path, **read_source_args)
    labels, multi = found.labels, found.multi_label
    published = {item["split"] for item in found.items if item.get("split")}
    meta = _source_meta(source, found, seed)
    group_key = _group_items(
        source, out_path, found, group_key, grouper, group_column, read_source_args, meta
    )
    splits = _make_splits(found.items, published, group_key, ratios, val_fraction, seed, meta)
    meta["class_counts"] = {k: class_counts(v, len(labels), multi) for k, v in splits.items()}
    _log_counts(splits, labels, multi, "published splits" if published else f"ratios {meta['ratios']}")
    return save_datalist(out_path, splits, labels, multi_label=multi, **meta)


def _log_counts(splits: dict, labels: list[str], multi: bool, how: str) -> None:
    """The images per split and class, in the log; ``how`` says where the splits came from."""
    logger.info(
        "images per split and class (%s):\n%s",
        how,
        summarize({"labels": labels, "multi_label": multi, **splits}),
    )


def _source_meta(source: Path, found: SourceItems, seed) -> dict:
    """What the datalist records about its source: name, path, kind, seed and the reader's own notes."""
    return {
        "name": source.stem if source.is_file() else source.name,
        "source": str(source),
        "source_kind": found.kind,
        "seed": seed,
        **found.meta,
    }


def _group_items(
    source: Path, out_path: Path, found: SourceItems, group_key: str, grouper, group_column, read_args, meta
) -> str:
    """Cluster the items the split must keep together (near-duplicates with ``grouper``, a label-file
    ``group_column``), noted in ``meta``; returns the item key the split groups by."""
    if grouper is not None:
        meta["near_duplicate_grouping"] = _near_duplicate_groups(source, found.items, found.labels, grouper)
        group_key = SPLIT_GROUP
    if group_column:
        _add_column_groups(source, out_path, found.items, group_column, read_args)
        meta["group_column"] = group_column
        meta["column_groups"] = combine_groups(found.items, (group_key, COLUMN_GROUP), SPLIT_GROUP)
        group_key = SPLIT_GROUP
    return group_key


def _make_splits(items, published: set, group_key: str, ratios, val_fraction, seed, meta: dict) -> dict:
    """The published splits (see ``_published_splits``), else a split by ``ratios``; each item's ``split``
    set to its final one, the ratios noted in ``meta``."""
    if published:
        splits = _published_splits(items, published, group_key, val_fraction, seed, meta)
    else:
        fractions = parse_ratios(ratios)
        splits = split_items(items, fractions, seed, group_key)
        check_no_leakage(splits, group_key)
        meta["ratios"] = fractions
    for name, members in splits.items():  # `split` records the final split, carved or published
        for item in members:
            item["split"] = name
    return splits


def _existing_datalist(source: Path, read_args: dict, group_column, grouper) -> Path:
    """A datalist ``.json`` given as the source: validated and used as it is (label-file options are
    an error)."""
    label_file_options = {**{k: read_args.get(k) for k in TABLE_OPTIONS}, "group_column": group_column}
    given = sorted(k for k, v in label_file_options.items() if v)
    if given:
        raise ValueError(f"{source}: {', '.join(given)} apply to a label file, not to a datalist .json")
    load_datalist(source)
    if grouper is not None:
        logger.warning(
            "%s is a datalist with its own split: near-duplicate grouping is not applied (`cit audit` "
            "writes a regrouped copy of it)",
            source,
        )
    return source


def _near_duplicate_groups(source: Path, items: list[dict], labels: list[str], grouper) -> dict:
    """Cluster ``items`` by patient and (near-)duplicate image (``grouper``; item key ``split_group``)."""
    grouping = grouper(items, labels)
    logger.info(
        "near-duplicate grouping of %s: %d duplicate cluster(s) holding %d of %d images (largest %d; "
        "%d exact, %d near-duplicate pairs), %d split groups",
        source,
        grouping["duplicate_clusters"],
        grouping["images_in_duplicate_clusters"],
        len(items),
        grouping["largest_duplicate_cluster"],
        grouping["exact_duplicate_pairs"],
        grouping["near_duplicate_pairs"],
        grouping["groups"],
    )
    return grouping


def _published_splits(items, published: set, group_key: str, val_fraction, seed, meta: dict) -> dict:
    """The published splits (items outside any go to training), validation carved from training by
    ``group_key`` when none is published; what it did goes into ``meta``."""
    splits = {name: [i for i in items if i.get("split") == name] for name in SPLIT_NAMES if name in published}
    unsplit = [i for i in items if not i.get("split")]
    if unsplit:
        logger.warning("%d item(s) outside any split folder/column are added to training", len(unsplit))
        splits.setdefault("training", []).extend(unsplit)
    shared = _shared_groups(splits, group_key)
    if shared:
        logger.warning(
            "%d %s value(s) appear in more than one published split (kept as published): %s",
            len(shared),
            group_key,
            ", ".join(shared[:SHOW]),
        )
        meta["published_split_shared_groups"] = len(shared)
    if "validation" not in splits and "training" in splits and val_fraction:
        carved = split_items(
            splits["training"], {"training": 1 - val_fraction, "validation": val_fraction}, seed, group_key
        )
        check_no_leakage(carved, group_key)
        splits.update(carved)
        splits = {k: splits[k] for k in SPLIT_NAMES if k in splits}
        meta["val_fraction"] = val_fraction
    meta["ratios"] = "published"
    return splits


def _add_column_groups(
    source: Path, out_path: Path, items: Sequence[dict], column: str, read_args: dict
) -> None:
    """Set ``COLUMN_GROUP`` of each item to its row's value in the label file's ``column``.

    The source readers keep only the columns they know, so the label file is read a second time
    with ``column`` in the place of the patient column: the same reader finds the same image for
    each row, however the image is named (column, id, pattern)."""
    tables = [source] if source.is_file() else label_tables(source)
    if len(tables) != 1 or tables[0].suffix.lower() not in TABLE_SUFFIXES:
        raise ValueError(
            f"{source}: a group column ({column!r}) needs a label file (CSV / TSV), or a folder "
            "holding one; pass the label file itself as the source"
        )
    resolved = resolve_column(tables[0], csv_header(tables[0]), column, "group")
    again = read_source(source, out_path, **{**read_args, "patient_column": resolved})
    values = {str(item["image"]): item.get("patient_id") for item in again.items}
    for item in items:
        value = values.get(str(item["image"]))
        if value not in (None, ""):
            item[COLUMN_GROUP] = value


def _shared_groups(splits: Mapping[str, Sequence[dict]], group_key: str) -> list[str]:
    seen: dict[str, set] = {}
    for name, items in splits.items():
        for item in items:
            value = item.get(group_key)
            if value not in (None, ""):
                seen.setdefault(str(value), set()).add(name)
    return sorted(k for k, v in seen.items() if len(v) > 1)


def summarize(doc: Mapping) -> str:
    """Per-split class counts of a loaded datalist, as a small text table."""
    labels, multi = doc["labels"], bool(doc.get("multi_label"))
    width = max([len(n) for n in labels] + [5])
    splits = split_keys(doc)
    lines = [f"{'class':<{width}} " + " ".join(f"{s:>10}" for s in splits)]
    counts = {s: class_counts(doc[s], len(labels), multi) for s in splits}
    for i, name in enumerate(labels):
        lines.append(f"{name:<{width}} " + " ".join(f"{counts[s][i]:>10}" for s in splits))
    lines.append(f"{'total':<{width}} " + " ".join(f"{len(doc[s]):>10}" for s in splits))
    return "\n".join(lines)


__all__ = [
    "CHESTXRAY14_FINDINGS",
    "build_datalist",
    "from_chestxray14",
    "from_class_folders",
    "from_csv",
    "from_dicom_folder",
    "from_medmnist",
    "load_datalist",
    "label_tables",
    "read_source",
    "save_datalist",
    "split_keys",
    "summarize",
]
