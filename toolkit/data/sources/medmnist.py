"""MedMNIST ``.npz`` files: arrays exported once to PNG / NIfTI files, published splits kept."""

from __future__ import annotations

import gzip
import io
import json
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from toolkit.data.sources.base import SourceItems
from toolkit.io import atomic_write_bytes, atomic_write_json

# npz key prefix -> split name
_PUBLISHED = {"train": "training", "val": "validation", "test": "test"}


def _load(npz_path: Path):
    try:
        data = np.load(npz_path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(f"cannot read MedMNIST file {npz_path}: {err}") from err
    missing = [f"{p}_{k}" for p in _PUBLISHED for k in ("images", "labels") if f"{p}_{k}" not in data.files]
    if missing:
        raise ValueError(f"{npz_path} is not a MedMNIST file: missing keys {missing} (has {data.files})")
    return data


def _read_stamp(marker: Path) -> dict | None:
    try:
        return json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # absent or damaged: export again
        return None


def _write_array(path: Path, image: np.ndarray, volume: bool) -> None:
    image = np.ascontiguousarray(image)
    if volume:
        import nibabel as nib  # ~0.4 s: only MedMNIST 3D exports need it

        # What nib.save writes to a .nii.gz (gzip level 1), built in memory for the atomic write.
        data = gzip.compress(nib.Nifti1Image(image, np.eye(4)).to_bytes(), compresslevel=1, mtime=0)
    else:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        data = buffer.getvalue()
    atomic_write_bytes(path, data)


def medmnist_items(npz_path, out_dir, classes=None) -> SourceItems:
    """The items of a MedMNIST file, each with its published ``split``; see :func:`from_medmnist`.

    ``classes`` names the classes (as many as the file has), instead of "0", "1", ...
    """
    npz_path = Path(npz_path).expanduser().resolve()
    out_dir = Path(out_dir).expanduser().resolve()
    data = _load(npz_path)

    num_classes, multi = 0, False
    for prefix in _PUBLISHED:
        labels = data[f"{prefix}_labels"]
        if labels.ndim == 2 and labels.shape[1] > 1:
            multi = True
            num_classes = labels.shape[1]
        else:
            num_classes = max(num_classes, int(labels.max()) + 1 if labels.size else 0)
    label_names = [str(i) for i in range(num_classes)]
    if classes is not None:
        if len(classes) != num_classes:
            raise ValueError(f"{npz_path} has {num_classes} classes but {len(classes)} names were given")
        label_names = [str(c) for c in classes]

    # Export once: a marker records which npz (size + mtime) the files came from.
    target = out_dir / npz_path.stem
    marker = target / ".exported.json"
    stamp = {"npz": str(npz_path), "size": npz_path.stat().st_size, "mtime": npz_path.stat().st_mtime}
    fresh = _read_stamp(marker) != stamp

    items = []
    for prefix, split in _PUBLISHED.items():
        images, labels = data[f"{prefix}_images"], data[f"{prefix}_labels"]
        if len(images) != len(labels):
            raise ValueError(
                f"{npz_path}: {prefix}_images has {len(images)} rows but {prefix}_labels {len(labels)}"
            )
        volume = images.ndim == 4 and images.shape[-1] != 3  # (N,D,H,W); (N,H,W,3) is 2D RGB
        folder = target / split
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
    if fresh:
        atomic_write_json(marker, stamp, indent=None)
    return SourceItems(items, label_names, multi_label=multi, kind="medmnist")


def from_medmnist(npz_path, out_dir) -> dict[str, list[dict]]:
    """Export a MedMNIST ``.npz`` to image files and return ``{training, validation, test}`` items.

    2D images become PNG (grey or RGB), 3D volumes NIfTI, written once under
    ``out_dir/<npz stem>/<split>/`` so the usual file-based transforms apply. Labels ``(N,)`` or
    ``(N,1)`` are class indices; ``(N,K)`` are multi-hot. The published splits are kept.
    """
    items = medmnist_items(npz_path, out_dir).items
    return {split: [i for i in items if i["split"] == split] for split in _PUBLISHED.values()}
