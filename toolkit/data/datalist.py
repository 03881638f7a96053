"""Datalist builders: turn folders, CSV manifests, MedMNIST ``.npz`` and DICOM folders into the
decathlon-style JSON datalist described in docs/architecture.md.

Every builder returns plain item dicts (``image`` absolute path, ``label`` int or multi-hot list,
``label_name``, and ``patient_id`` / ``split`` where the source has them). ``build_datalist`` is the
single entry point bundles call; it picks the builder, keeps published splits, splits the rest by
patient and writes the JSON.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import tempfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from toolkit.data.files import MASK_FOLDERS, file_kind, find_image_files
from toolkit.data.splits import SPLIT_NAMES, check_no_leakage, class_counts, parse_ratios, split_items

logger = logging.getLogger(__name__)

# Folder / column values naming a split, case-insensitive.
SPLIT_ALIASES = {
    "train": "training", "training": "training", "tr": "training",
    "val": "validation", "valid": "validation", "validation": "validation", "dev": "validation",
    "test": "test", "testing": "test", "ts": "test",
}  # fmt: skip

# NIH ChestX-ray14 findings in the order of the NIH release (and CheXNet).
CHESTXRAY14_FINDINGS = [
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
    "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
]  # fmt: skip

# DICOM attributes a label CSV may be keyed by (also used to recognise such a CSV in a folder).
DICOM_KEYS = ("AccessionNumber", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "PatientID")

_SHOW = 5  # how many example names a warning lists


# ---------------------------------------------------------------------------------------------
# name-based label / patient presets


def _kermany_3class(path: str) -> str | None:
    """Kermany CXR: NORMAL/* -> normal; personN_bacteria_M -> bacteria; personN_virus_M -> virus."""
    p = Path(path)
    name = p.name.lower()
    if "bacteria" in name:
        return "bacteria"
    if "virus" in name:
        return "virus"
    if p.parent.name.upper() == "NORMAL" or name.startswith(("im-", "normal")):
        return "normal"
    return None


_KERMANY_PATIENT = re.compile(r"^(person\d+)_|^((?:NORMAL\d*-)?IM-\d+)", re.IGNORECASE)


def _kermany_patient(path: str) -> str | None:
    """Kermany CXR patient ids as the file names encode them: ``personN`` or ``[NORMAL2-]IM-XXXX``."""
    match = _KERMANY_PATIENT.match(Path(path).name)
    return (match.group(1) or match.group(2)) if match else None


LABEL_PRESETS: dict[str, tuple[Callable[[str], str | None], list[str]]] = {
    "kermany_3class": (_kermany_3class, ["normal", "bacteria", "virus"]),
}
PATIENT_PRESETS: dict[str, Callable[[str], str | None]] = {
    "kermany": _kermany_patient,
    # The Kaggle brain-tumour MRI names (Tr-gl_0011.jpg) do not encode a patient, so no preset.
}


def _resolve_preset(value, presets: Mapping, what: str):
    if value is None or callable(value):
        return value
    if value in presets:
        return presets[value]
    raise ValueError(
        f"unknown {what} preset {value!r}; known: {', '.join(sorted(presets))} (or pass a callable)"
    )


def _warn_list(message: str, names: Sequence) -> None:
    if names:
        shown = ", ".join(str(n) for n in names[:_SHOW])
        more = f" ... (+{len(names) - _SHOW} more)" if len(names) > _SHOW else ""
        logger.warning("%s: %d file(s): %s%s", message, len(names), shown, more)


# ---------------------------------------------------------------------------------------------
# readability checks


def _unreadable_reason(path: Path, kind: str) -> str | None:
    """Why an image file cannot be used (header-level check), or None if it looks fine."""
    try:
        if kind == "raster":
            from PIL import Image

            with Image.open(path) as img:
                if img.size[0] < 1 or img.size[1] < 1:
                    return f"empty image {img.size}"
        elif kind == "nifti":
            import nibabel as nib

            nib.load(str(path))
        elif kind == "dicom":
            return _dicom_header(path)[1]
    except Exception as err:  # any reader error means the file is unusable; report, never crash
        return f"{type(err).__name__}: {err}"
    return None


def _dicom_header(path: Path):
    """(dataset, None) for an image DICOM header, or (None, reason) when unreadable / not an image."""
    import pydicom

    try:
        with warnings.catch_warnings():  # header oddities are pydicom's to log; failures are reported below
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(str(path), stop_before_pixels=True, force=True)
    except Exception as err:  # pydicom raises many types for broken files
        return None, f"{type(err).__name__}: {err}"
    if "Rows" not in ds or "Columns" not in ds:
        sop = ds.get("SOPClassUID", "unknown")
        name = getattr(sop, "name", sop)
        return None, f"no image attributes (Rows/Columns) in the header; SOP class {name}"
    return ds, None


def _dicom_ids(ds) -> dict:
    """Patient and UID fields of a DICOM header, for datalist items."""
    fields = {
        "patient_id": "PatientID",
        "study_uid": "StudyInstanceUID",
        "series_uid": "SeriesInstanceUID",
        "sop_instance_uid": "SOPInstanceUID",
    }
    out = {}
    with warnings.catch_warnings():  # odd but usable UIDs are kept as they are
        warnings.simplefilter("ignore")
        for key, attr in fields.items():
            value = str(ds.get(attr, "") or "").strip()
            if value:
                out[key] = value
    return out


# ---------------------------------------------------------------------------------------------
# class-per-folder trees


def _split_from_parts(parts: Sequence[str]) -> tuple[str | None, int]:
    """(split name, index of the split folder) for the first split-named folder in ``parts``."""
    for index, part in enumerate(parts):
        split = SPLIT_ALIASES.get(part.lower())
        if split:
            return split, index
    return None, -1


def _label_index(names: Sequence[str], classes: Sequence[str] | None) -> list[str]:
    return list(classes) if classes is not None else sorted(set(names))


def _class_folder_items(root, classes=None, label_from_name=None, patient_from_name=None):
    """Items and label names of a class-per-folder tree (see ``from_class_folders``)."""
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {root}")
    label_fn = label_from_name
    if isinstance(label_from_name, str):
        label_fn, preset_classes = _resolve_preset(label_from_name, LABEL_PRESETS, "label_from_name")
        classes = classes if classes is not None else preset_classes
    patient_fn = _resolve_preset(patient_from_name, PATIENT_PRESETS, "patient_from_name")

    records, unreadable, no_class = [], [], []
    for path, kind in _scan(root):
        header = None
        if kind == "dicom":
            header, reason = _dicom_header(path)
        else:
            reason = _unreadable_reason(path, kind)
        if reason:
            unreadable.append(f"{path} ({reason})")
            continue
        parts = path.relative_to(root).parts[:-1]
        split, split_at = _split_from_parts(parts)
        records.append((path, split, list(parts[split_at + 1 :]), header))
    for entry in unreadable:
        logger.warning("skipping unreadable image %s", entry)

    # Wrapper folders shared by every image (root/chest_xray/NORMAL/...) are not classes.
    folder_lists = [r[2] for r in records]
    common = 0
    if folder_lists and label_fn is None:
        while all(len(f) > common + 1 for f in folder_lists) and len({f[common] for f in folder_lists}) == 1:
            common += 1

    rows = []
    for path, split, folders, header in records:
        if label_fn is not None:
            name = label_fn(str(path))
        else:
            name = folders[common] if len(folders) > common else None
            if classes is not None and name is not None:
                # With given classes, the class is the first folder that names one (case-insensitive).
                lowered = {c.lower(): c for c in classes}
                name = next((lowered[f.lower()] for f in folders if f.lower() in lowered), name)
        if not name:
            no_class.append(str(path))
            continue
        row = {"image": str(path), "label_name": str(name)}
        if header is not None:
            row.update(_dicom_ids(header))
        if patient_fn is not None:
            pid = patient_fn(str(path))
            if pid:
                row["patient_id"] = str(pid)
        if split:
            row["split"] = split
        rows.append(row)
    _warn_list("skipping images with no class (no class folder / name not recognised)", no_class)

    labels = _label_index([r["label_name"] for r in rows], classes)
    items = _attach_labels(rows, labels, str(root))
    if not items:
        raise ValueError(f"no labelled images found under {root}")
    return items, labels


# Metadata beside the images is expected and not worth a warning.
_SIDE_SUFFIXES = (".csv", ".tsv", ".json", ".txt", ".md", ".yaml", ".yml", ".xml", ".xlsx", ".pdf", ".html")
_SIDE_NAMES = ("license", "readme", "dicomdir")


def _scan(root: Path) -> list[tuple[Path, str]]:
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
    _warn_list(f"skipping files that are not images (PNG/JPEG/DICOM/NIfTI) under {root}", others)
    _warn_list(f"skipping segmentation-mask folders under {root}", masks)
    return images


def _attach_labels(rows: list[dict], labels: Sequence[str], source: str) -> list[dict]:
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
    _warn_list(f"skipping images whose class is not in {list(labels)} ({source})", unknown)
    return items


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
    return _class_folder_items(root, classes, label_from_name, patient_from_name)[0]


# ---------------------------------------------------------------------------------------------
# CSV manifests


def _read_csv(csv_path: Path) -> list[dict]:
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            columns = reader.fieldnames or []
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise ValueError(f"cannot read CSV {csv_path}: {err}") from err
    if not columns:
        raise ValueError(f"CSV {csv_path} is empty (no header row)")
    return rows, columns


# Column names that hold the image path in manifests met in the wild, most specific first.
IMAGE_COLUMNS = ("image", "image_path", "filepath", "file_path", "path", "filename", "file")
LABEL_COLUMNS = ("label", "class", "class_name", "diagnosis", "target", "category")


def _require_columns(csv_path, columns, wanted):
    missing = [c for c in wanted if c and c not in columns]
    if missing:
        raise ValueError(f"CSV {csv_path} has no column(s) {missing}; columns are {columns}")


def _csv_items(
    csv_path,
    image_column="image",
    label_column="label",
    root=None,
    patient_column=None,
    multi_label_sep=None,
    classes=None,
    split_column=None,
    negative_labels=(),
    image_lookup=None,
):
    """(items, labels, multi_label) of a CSV manifest; see ``from_csv``."""
    csv_path = Path(csv_path).expanduser().resolve()
    rows, columns = _read_csv(csv_path)
    _require_columns(csv_path, columns, [image_column, label_column, patient_column, split_column])
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
            hot = [0] * len(labels)
            unknown = [n for n in names if index_of(n) is None]
            if unknown:
                bad_label.append(f"line {line}: unknown label(s) {unknown}")
                continue
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
    _warn_list(f"{csv_path}: skipping rows whose image file is missing", missing)
    _warn_list(f"{csv_path}: skipping rows with a bad label", bad_label)
    if not items:
        raise ValueError(f"no usable rows in {csv_path} (images resolved against {base})")
    return items, labels, multi


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
    return _csv_items(
        csv_path, image_column, label_column, root, patient_column, multi_label_sep, classes, split_column
    )[0]


def _name_index(image_dir: Path):
    """Look up image file names anywhere below ``image_dir`` (NIH archives unpack to images_0xx/images/)."""
    cache: dict[str, Path] | None = None

    def lookup(name: str) -> Path | None:
        nonlocal cache
        direct = image_dir / name
        if direct.is_file():
            return direct
        if cache is None:
            cache = {}
            for dirpath, _, filenames in os.walk(image_dir):
                for f in filenames:
                    cache.setdefault(f, Path(dirpath) / f)
        return cache.get(Path(name).name)

    return lookup


def _chestxray14_items(csv_path, image_dir):
    image_dir = Path(image_dir).expanduser().resolve()
    if not image_dir.is_dir():
        raise FileNotFoundError(f"ChestX-ray14 image folder not found: {image_dir}")
    return _csv_items(
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


def from_chestxray14(csv_path, image_dir) -> list[dict]:
    """Items of NIH ChestX-ray14 (``Data_Entry_2017.csv``): 14 findings as multi-hot labels.

    Findings are in the NIH order (``CHESTXRAY14_FINDINGS``); "No Finding" is all zeros. Images
    are looked up in ``image_dir`` or any folder below it; rows whose image is missing are
    reported (count and first few) and skipped.
    """
    return _chestxray14_items(csv_path, image_dir)[0]


# ---------------------------------------------------------------------------------------------
# MedMNIST


def _medmnist_items(npz_path, out_dir):
    npz_path = Path(npz_path).expanduser().resolve()
    out_dir = Path(out_dir).expanduser().resolve()
    try:
        data = np.load(npz_path, allow_pickle=False)
    except Exception as err:
        raise ValueError(f"cannot read MedMNIST file {npz_path}: {err}") from err
    published = {"train": "training", "val": "validation", "test": "test"}
    missing = [f"{p}_{k}" for p in published for k in ("images", "labels") if f"{p}_{k}" not in data.files]
    if missing:
        raise ValueError(f"{npz_path} is not a MedMNIST file: missing keys {missing} (has {data.files})")

    num_classes, multi = 0, False
    for prefix in published:
        labels = data[f"{prefix}_labels"]
        if labels.ndim == 2 and labels.shape[1] > 1:
            multi = True
            num_classes = labels.shape[1]
        else:
            num_classes = max(num_classes, int(labels.max()) + 1 if labels.size else 0)
    label_names = [str(i) for i in range(num_classes)]

    # Export once: a marker records which npz (size + mtime) the files came from.
    target = out_dir / npz_path.stem
    marker = target / ".exported.json"
    stamp = {"npz": str(npz_path), "size": npz_path.stat().st_size, "mtime": npz_path.stat().st_mtime}
    fresh = not (marker.is_file() and json.loads(marker.read_text()) == stamp)

    splits = {}
    for prefix, split in published.items():
        images, labels = data[f"{prefix}_images"], data[f"{prefix}_labels"]
        if len(images) != len(labels):
            raise ValueError(
                f"{npz_path}: {prefix}_images has {len(images)} rows but {prefix}_labels {len(labels)}"
            )
        volume = images.ndim == 4 and images.shape[-1] != 3  # (N,D,H,W); (N,H,W,3) is 2D RGB
        folder = target / split
        folder.mkdir(parents=True, exist_ok=True)
        items = []
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            path = folder / (f"{i:05d}.nii.gz" if volume else f"{i:05d}.png")
            if fresh or not path.is_file():
                _write_array(path, image, volume)
            item = {"image": str(path), "split": split, "source_index": i}
            if multi:
                hot = [int(v) for v in np.asarray(label).reshape(-1)]
                item["label"], item["label_name"] = hot, [label_names[k] for k, v in enumerate(hot) if v]
            else:
                k = int(np.asarray(label).reshape(-1)[0])
                item["label"], item["label_name"] = k, label_names[k]
            items.append(item)
        splits[split] = items
    if fresh:
        marker.write_text(json.dumps(stamp))
    return splits, label_names, multi


def _write_array(path: Path, image: np.ndarray, volume: bool) -> None:
    if volume:
        import nibabel as nib

        nib.save(nib.Nifti1Image(np.ascontiguousarray(image), np.eye(4)), str(path))
    else:
        from PIL import Image

        Image.fromarray(np.ascontiguousarray(image)).save(path)


def from_medmnist(npz_path, out_dir) -> dict[str, list[dict]]:
    """Export a MedMNIST ``.npz`` to image files and return ``{training, validation, test}`` items.

    2D images become PNG (grey or RGB), 3D volumes NIfTI, written once under
    ``out_dir/<npz stem>/<split>/`` so the usual file-based transforms apply. Labels ``(N,)`` or
    ``(N,1)`` are class indices; ``(N,K)`` are multi-hot. The published splits are kept.
    """
    return _medmnist_items(npz_path, out_dir)[0]


# ---------------------------------------------------------------------------------------------
# DICOM folders


def _dicom_items(root, labels_csv=None, key="AccessionNumber", label_column="label", classes=None):
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"DICOM folder not found: {root}")
    table = None
    if labels_csv is not None:
        labels_csv = Path(labels_csv).expanduser().resolve()
        rows, columns = _read_csv(labels_csv)
        _require_columns(labels_csv, columns, [key, label_column])
        table = {}
        for row in rows:
            k = (row.get(key) or "").strip()
            if k:
                table[k] = (row.get(label_column) or "").strip()

    records, unreadable, not_in_csv = [], [], []
    for path, kind in _scan(root):
        if kind != "dicom":
            continue
        ds, reason = _dicom_header(path)
        if reason:
            unreadable.append(f"{path} ({reason})")
            continue
        row = {"image": str(path), **_dicom_ids(ds)}
        if table is not None:
            value = str(ds.get(key, "") or "").strip()
            if value not in table:
                not_in_csv.append(f"{path} ({key}={value or 'missing'})")
                continue
            row["label_name"] = table[value]
        else:
            parts = path.relative_to(root).parts[:-1]
            split, at = _split_from_parts(parts)
            if split:
                row["split"] = split
            row["_folders"] = list(parts[at + 1 :])
        records.append(row)
    for entry in unreadable:
        logger.warning("skipping unreadable DICOM %s", entry)
    _warn_list(f"skipping DICOM files whose {key} is not in {labels_csv}", not_in_csv)

    if table is None:
        # Label = class folder (first folder below any split folder, after shared wrapper folders).
        folder_lists = [r["_folders"] for r in records]
        common = 0
        while (
            folder_lists
            and all(len(f) > common + 1 for f in folder_lists)
            and len({f[common] for f in folder_lists}) == 1
        ):
            common += 1
        kept = []
        for r in records:
            folders = r.pop("_folders")
            name = folders[common] if len(folders) > common else Path(r["image"]).parent.name
            r["label_name"] = name
            kept.append(r)
        records = kept

    names = [r["label_name"] for r in records]
    if classes is None and names and all(re.fullmatch(r"\d+", n) for n in names):
        classes = [str(i) for i in range(max(int(n) for n in names) + 1)]
    labels = _label_index(names, classes)
    for r in records:  # integer labels in the CSV name classes by index
        if (
            r["label_name"] not in labels
            and re.fullmatch(r"\d+", r["label_name"])
            and int(r["label_name"]) < len(labels)
        ):
            r["label_name"] = labels[int(r["label_name"])]
    items = _attach_labels(records, labels, str(root))
    if not items:
        raise ValueError(f"no labelled DICOM images found under {root}")
    return items, labels


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
    return _dicom_items(root, labels_csv, key, label_column, classes)[0]


# ---------------------------------------------------------------------------------------------
# JSON datalist files


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
    base.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=base)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a datalist is a shared, reviewable file
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=1)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


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


def _dicom_label_csv(folder: Path) -> tuple[Path, str] | None:
    """(csv, key) if ``folder`` has a CSV keyed by a DICOM attribute (labels for a DICOM folder)."""
    for csv_path in sorted(folder.glob("*.csv")):
        try:
            with open(csv_path, newline="", encoding="utf-8-sig") as f:
                header = next(csv.reader(f), [])
        except (OSError, UnicodeDecodeError, csv.Error):
            continue
        for key in DICOM_KEYS:
            if key in header and "label" in header:
                return csv_path, key
    return None


def _collect(source: Path, out_path: Path, classes, label_from_name, patient_from_name):
    """(items, labels, multi_label, kind) for any supported source."""
    suffix = source.name.lower()
    if source.is_dir():
        keyed = _dicom_label_csv(source)
        if keyed and all(file_kind(p) == "dicom" for p in find_image_files(source)):
            items, labels = _dicom_items(source, keyed[0], keyed[1], classes=classes)
            return items, labels, False, "dicom_folder"
        items, labels = _class_folder_items(source, classes, label_from_name, patient_from_name)
        return items, labels, False, "class_folders"
    if suffix.endswith(".npz"):
        splits, labels, multi = _medmnist_items(source, out_path.parent / f"{source.stem}_images")
        if classes is not None:
            if len(classes) != len(labels):
                raise ValueError(f"{source} has {len(labels)} classes but {len(classes)} names were given")
            labels = list(classes)
            for items in splits.values():
                for item in items:
                    item["label_name"] = (
                        [labels[k] for k, v in enumerate(item["label"]) if v]
                        if multi
                        else labels[item["label"]]
                    )
        return [i for items in splits.values() for i in items], labels, multi, "medmnist"
    if suffix.endswith(".csv"):
        _, columns = _read_csv(source)
        if "Image Index" in columns and "Finding Labels" in columns:
            image_dir = source.parent / "images" if (source.parent / "images").is_dir() else source.parent
            items, labels, multi = _chestxray14_items(source, image_dir)
            return items, labels, multi, "chestxray14"
        patient = next(
            (c for c in ("patient_id", "PatientID", "patient", "Patient ID") if c in columns), None
        )
        split = "split" if "split" in columns else None
        image = next((c for c in IMAGE_COLUMNS if c in columns), "image")
        label = next((c for c in LABEL_COLUMNS if c in columns), "label")
        items, labels, multi = _csv_items(
            source, image_column=image, label_column=label, patient_column=patient, classes=classes,
            split_column=split,
        )
        return items, labels, multi, "csv"
    raise ValueError(f"unsupported dataset source {source}: expected a folder, .csv, .npz or datalist .json")


def build_datalist(
    source,
    out_path,
    ratios=None,
    val_fraction=0.15,
    seed=0,
    classes=None,
    label_from_name=None,
    patient_from_name=None,
    group_key="patient_id",
) -> Path:
    """Build (or validate) the datalist JSON for ``source`` and return its path.

    ``source``: an existing datalist ``.json`` (validated and returned as is), a class-per-folder
    tree (DICOM folders with a ``*.csv`` keyed by a DICOM attribute use that CSV), a CSV manifest
    (NIH ``Data_Entry_2017.csv`` recognised; otherwise the image and label columns are the first of
    ``IMAGE_COLUMNS`` / ``LABEL_COLUMNS`` present), or a MedMNIST ``.npz``. Published splits are kept;
    with training and test but no validation, validation is carved from training by patient
    (``val_fraction``). Without published splits, items are split by ``ratios`` (default
    80/10/10), stratified and grouped by ``group_key``. No patient is in two of the splits made
    here. Deterministic for a given ``seed``.
    """
    source = Path(source).expanduser().resolve()
    out_path = Path(out_path).expanduser().resolve()
    if not source.exists():
        raise FileNotFoundError(f"dataset source not found: {source}")
    if source.is_file() and source.suffix.lower() == ".json":
        load_datalist(source)
        return source

    items, labels, multi, kind = _collect(source, out_path, classes, label_from_name, patient_from_name)
    published = {item["split"] for item in items if item.get("split")}
    meta = {
        "name": source.stem if source.is_file() else source.name,
        "source": str(source),
        "source_kind": kind,
    }
    meta["seed"] = seed
    if published:
        splits = {
            name: [i for i in items if i.get("split") == name] for name in SPLIT_NAMES if name in published
        }
        unsplit = [i for i in items if not i.get("split")]
        if unsplit:
            logger.warning("%d item(s) outside any split folder/column are added to training", len(unsplit))
            splits.setdefault("training", []).extend(unsplit)
        shared = _shared_groups(splits, group_key)
        if shared:
            logger.warning(
                "%d %s value(s) appear in more than one published split (kept as published): %s",
                len(shared), group_key, ", ".join(shared[:_SHOW]),
            )  # fmt: skip
            meta["published_split_shared_groups"] = len(shared)
        if "validation" not in splits and "training" in splits and val_fraction:
            carved = split_items(
                splits["training"],
                {"training": 1 - val_fraction, "validation": val_fraction},
                seed,
                group_key,
            )
            check_no_leakage(carved, group_key)
            splits.update(carved)
            splits = {k: splits[k] for k in SPLIT_NAMES if k in splits}
            meta["val_fraction"] = val_fraction
        meta["ratios"] = "published"
    else:
        fractions = parse_ratios(ratios)
        splits = split_items(items, fractions, seed, group_key)
        check_no_leakage(splits, group_key)
        meta["ratios"] = fractions
    for name, members in splits.items():  # `split` records the final split, carved or published
        for item in members:
            item["split"] = name
    meta["class_counts"] = {k: class_counts(v, len(labels), multi) for k, v in splits.items()}
    return save_datalist(out_path, splits, labels, multi_label=multi, **meta)


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
    "save_datalist",
    "summarize",
]
