"""Data-set audit: class balance, image properties, unreadable files and train/test leakage.

Published results of 99-100% accuracy often come from splits that put one patient, or augmented
copies of one image, in both training and test. The audit looks for exactly that:

* the same ``patient_id`` in two splits;
* exact duplicates: identical file bytes, or identical decoded pixels (a re-encoded copy, or
  DICOM files differing only in their header);
* near-duplicates: perceptual hashes (``imagehash.phash``, 64 bits) within a Hamming distance,
  by default also against the 8 rotations / flips of the other image, as augmented copies are
  often rotated or mirrored; each candidate is confirmed with a finer 256-bit pHash and on the
  pixels (contrast-normalised thumbnail difference under the matched rotation / flip).

It also looks for confounds: image properties (colour mode, channels as stored, bit depth, size,
format, DICOM modality / manufacturer) that predict the label, a shortcut a network learns
instead of the disease (``confounds``).

Every image is decoded once by the caller's ``read_image`` (``cit audit`` passes the toolkit's
readers, so DICOM / NIfTI / PNG / JPEG all work): the readers live in ``toolkit.transforms``, a
layer above this one, so the audit takes the function instead of importing them. A file that
cannot be read is reported and skipped. Hash pairs are compared with numpy popcounts in blocks,
which handles ~6,000 images in seconds. ``regroup`` offers the fix: the same split with each
patient and each cluster of duplicates moved into one split, every other image left where it was.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import logging
import os
import stat
import time
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image

from toolkit.data.datalist import build_datalist, load_datalist, save_datalist, split_keys
from toolkit.data.files import MASK_FOLDERS, file_kind
from toolkit.data.headers import UnreadableImage, check_image, dicom_header, nifti_header, raster_header
from toolkit.data.splits import check_no_leakage
from toolkit.io import atomic_write_json, atomic_write_text

logger = logging.getLogger(__name__)

# ``read_image(path)`` returns the decoded pixels: (H, W) grey, (H, W, C) colour, or a NIfTI volume;
# it raises OSError or ValueError for a file it cannot read (the readers' ImageReadError is a ValueError).
ReadImage = Callable[[str], np.ndarray]

# Two-stage near-duplicate test: 64-bit pHashes within DEFAULT_HAMMING bits make a candidate pair,
# confirmed when the 256-bit pHashes (16x16 DCT of the 64x64 thumbnail) under the matched transform
# differ in at most DEFAULT_CONFIRM bits. On the shared data the 64-bit hash alone matched different
# children's chest X-rays (all at >= 42 of 256 bits), while re-windowed / mirrored copies of one
# brain MRI slice stay within ~30 (docs/data-audit.md).
DEFAULT_HAMMING = 6
DEFAULT_CONFIRM = 32
# Pixel confirmation: the mean absolute difference of the two 32x32 grey thumbnails (b under the
# matched transform), each scaled to zero mean and unit standard deviation, so a re-windowed copy
# (another brightness / contrast) still matches. Measured on the shared data (docs/data-audit.md):
# the 9 brain-MRI copies that labels.csv flags are <= 0.02, all 236 pairs the 256-bit hash accepts
# there are <= 0.225, including re-windowed copies whose plain 32 px difference is 49 of 255;
# pairs that must not match (1,743: different classes, or different Kermany children) are >= 0.189.
DEFAULT_PIXEL = 0.25
PIXEL_SIZE = 32
THUMB = 64  # grey thumbnail kept per image: input of both hashes and of the pixel check
# The 8 symmetries of the square: how augmented copies are usually made.
TRANSFORMS = ("identity", "rot90", "rot180", "rot270", "flip", "flip+rot90", "flip+rot180", "flip+rot270")
_SHOW = 50  # pairs listed per table in audit.md (audit.json has all of them)


# ---------------------------------------------------------------------------------------------
# One image: header facts, content hashes, perceptual hashes


def _dihedral(thumb: np.ndarray) -> list[np.ndarray]:
    flipped = np.fliplr(thumb)
    return [np.rot90(thumb, k) for k in range(4)] + [np.rot90(flipped, k) for k in range(4)]


def _phash64(thumb: np.ndarray) -> int:
    """64-bit pHash (imagehash: 8x8 DCT of a 32x32 resize) as an int."""
    bits = imagehash.phash(Image.fromarray(np.ascontiguousarray(thumb))).hash.ravel()
    return int(np.packbits(bits).view(">u8")[0])


def phash256_distance(a: np.ndarray, b: np.ndarray, transform: int = 0) -> int:
    """Bits in which the 256-bit pHashes of two thumbnails differ, ``b`` under ``TRANSFORMS[transform]``."""
    ha = imagehash.phash(Image.fromarray(np.ascontiguousarray(a)), hash_size=16)
    hb = imagehash.phash(Image.fromarray(np.ascontiguousarray(_dihedral(b)[transform])), hash_size=16)
    return int(ha - hb)


def pixel_difference(a: np.ndarray, b: np.ndarray, transform: int = 0) -> float:
    """Mean absolute difference of two thumbnails at ``PIXEL_SIZE`` px, ``b`` under
    ``TRANSFORMS[transform]``, each scaled to mean 0 and standard deviation 1 (in SD units: 0 for
    the same picture at any brightness / contrast, about 1.1 for unrelated noise)."""

    def normalised(thumb: np.ndarray) -> np.ndarray:
        small = Image.fromarray(np.ascontiguousarray(thumb)).resize(
            (PIXEL_SIZE, PIXEL_SIZE), Image.Resampling.BOX
        )
        x = np.asarray(small, dtype=np.float64)
        sd = x.std()
        return (x - x.mean()) / (sd if sd > 0 else 1.0)

    return float(np.abs(normalised(a) - normalised(_dihedral(b)[transform])).mean())


def confirm_pair(
    a: np.ndarray,
    b: np.ndarray,
    transform: int,
    confirm: int | None = DEFAULT_CONFIRM,
    confirm_pixels: float | None = DEFAULT_PIXEL,
) -> tuple[int, float, bool]:
    """(256-bit pHash distance, pixel difference, confirmed?) of a near-duplicate candidate: the
    thumbnails ``a`` and ``b`` (``b`` under ``TRANSFORMS[transform]``) must be within both
    thresholds (``None``: that check is off)."""
    fine = phash256_distance(a, b, transform)
    pixels = round(pixel_difference(a, b, transform), 3)
    ok = (confirm is None or fine <= confirm) and (confirm_pixels is None or pixels <= confirm_pixels)
    return fine, pixels, ok


def _grey_plane(arr: np.ndarray, kind: str) -> np.ndarray | None:
    """The 2D grey plane to hash (colour averaged), or None for a volume.

    Volumes get exact-duplicate checks only: hashes of their slices or projections matched
    different patients' adrenal masks (AdrenalMNIST3D) as near-duplicates, so they would mislead.
    """
    if kind == "nifti":
        arr = np.squeeze(arr)
        return arr if arr.ndim == 2 else None
    return arr.mean(axis=-1) if arr.ndim == 3 else arr  # (H, W, 3) -> grey


def _thumbnail(plane: np.ndarray) -> np.ndarray:
    """Min-max scaled 8-bit ``THUMB`` x ``THUMB`` thumbnail (Lanczos, as imagehash resizes)."""
    plane = np.asarray(plane, dtype=np.float64)
    lo, hi = float(plane.min()), float(plane.max())
    scaled = (
        np.zeros(plane.shape, np.uint8) if hi <= lo else ((plane - lo) * (255.0 / (hi - lo))).astype(np.uint8)
    )
    return np.asarray(Image.fromarray(scaled).resize((THUMB, THUMB), Image.Resampling.LANCZOS))


_BITS_OF_MODE = {
    "1": 1,
    "L": 8,
    "P": 8,
    "LA": 8,
    "RGB": 8,
    "RGBA": 8,
    "CMYK": 8,
    "YCbCr": 8,
    "I": 32,
    "F": 32,
}


def _int_or_none(value) -> int | None:
    """A header number as an int; None when absent or malformed (e.g. multi-valued), not an error."""
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _header_facts(path: str, kind: str) -> dict:
    """Format, modality, photometric interpretation, bit depth and size from the file header.

    Raises ``headers.UnreadableImage`` (a ValueError) for a broken header.
    """
    if kind == "dicom":
        ds = dicom_header(path)
        return {
            "format": "DICOM",
            "modality": str(ds.get("Modality", "") or "unknown"),
            "manufacturer": " ".join(str(ds.get("Manufacturer", "") or "unknown").split()),
            "photometric": str(ds.get("PhotometricInterpretation", "") or "unknown"),
            "bit_depth": _int_or_none(ds.get("BitsStored")) or None,
            "channels": _int_or_none(ds.get("SamplesPerPixel")) or 1,
            "frames": _int_or_none(ds.get("NumberOfFrames")) or 1,
        }
    if kind == "nifti":
        img = nifti_header(path)
        dtype = np.dtype(img.get_data_dtype())
        return {
            "format": "NIfTI",
            "modality": "unknown",
            "photometric": "volume",
            "bit_depth": int(dtype.itemsize * 8 // max(1, len(dtype.names or ()))),
            "channels": len(dtype.names) if dtype.names else 1,  # RGB24 volumes: 3
            "frames": 1,
        }
    info = raster_header(path)
    mode = info["mode"]
    bits = 16 if mode.startswith("I;16") else _BITS_OF_MODE.get(mode)
    try:
        channels = Image.getmodebands(mode)  # as stored: RGBA = 4, LA = 2, palette = 1
    except (KeyError, ValueError):
        channels = None
    return {"format": info["format"] or "raster", "modality": "unknown", "photometric": mode, "bit_depth": bits,
            "channels": channels, "frames": info["frames"]}  # fmt: skip


def _colour_content(arr: np.ndarray) -> str:
    """``"grey"`` when the colour channels of an (H, W, C) image agree (a grey picture saved as
    RGB: 99% of pixels spread less than 4% of the image's range over R, G, B), else ``"colour"``."""
    step = max(1, max(arr.shape[:2]) // 512)
    rgb = np.asarray(arr[::step, ::step, :3], dtype=np.float32)
    if rgb.shape[-1] < 3:
        return "grey"
    spread = float(np.percentile(rgb.max(axis=-1) - rgb.min(axis=-1), 99))
    return "colour" if spread > 0.04 * max(float(rgb.max() - rgb.min()), 1e-6) else "grey"


def describe_image(path: str | os.PathLike, read_image: ReadImage) -> dict:
    """Header facts, hashes and thumbnail of one image; ``{"image", "error"}`` if it cannot be read.

    Keys: ``format``, ``modality`` (and ``manufacturer``) of DICOM files, ``photometric`` (the
    colour mode: DICOM Photometric Interpretation, or the Pillow mode of PNG / JPEG files),
    ``bit_depth``, ``channels`` (as stored: RGBA = 4), ``content`` (``grey`` / ``colour``: do the
    decoded colour channels differ; ``volume``), ``size`` ("WxH", width first, or the voxel
    shape of a volume), ``file_sha256``, ``pixel_sha256`` (of the decoded array and its shape),
    ``phash`` (8 ints: the 64-bit pHash of the image under each of ``TRANSFORMS``) and ``thumb``
    (64x64 uint8).
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            file_sha = hashlib.sha256(f.read()).hexdigest()
        kind = file_kind(path) or "unknown"
        arr = np.ascontiguousarray(read_image(path))
        facts = _header_facts(path, kind)
    except (OSError, ValueError) as exc:  # a broken or foreign file: report it and go on
        return {"image": path, "error": f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"}
    pixel = hashlib.sha256(repr(arr.shape).encode() + arr.astype(np.float32).tobytes()).hexdigest()
    plane = _grey_plane(arr, kind)
    thumb = None if plane is None else _thumbnail(plane)
    hashes = None if thumb is None else [_phash64(t) for t in _dihedral(thumb)]
    shape = (arr.shape[1], arr.shape[0]) if kind != "nifti" else arr.shape  # width x height
    content = "volume" if plane is None else _colour_content(arr) if arr.ndim == 3 else "grey"
    decoded_channels = int(arr.shape[2]) if kind != "nifti" and arr.ndim == 3 else 1
    return {
        "image": path,
        "kind": kind,
        **facts,
        "size": "x".join(str(int(s)) for s in shape),
        "channels": facts.get("channels") or decoded_channels,
        "content": content,
        "file_sha256": file_sha,
        "pixel_sha256": pixel,
        "phash": hashes,
        "thumb": thumb,
    }


def describe_images(
    paths: Sequence[str],
    read_image: ReadImage,
    workers: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> list[dict]:
    """``describe_image`` for every path, in order, with ``workers`` processes (1: in-process;
    more need a picklable ``read_image``, such as a module-level function)."""
    describe = functools.partial(describe_image, read_image=read_image)
    results: list[dict] = []
    if workers <= 1:
        for i, path in enumerate(paths):
            results.append(describe(path))
            if progress and (i + 1) % 500 == 0:
                progress(i + 1, len(paths))
        return results
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for i, result in enumerate(pool.map(describe, paths, chunksize=32)):
            results.append(result)
            if progress and (i + 1) % 500 == 0:
                progress(i + 1, len(paths))
    return results


# ---------------------------------------------------------------------------------------------
# Pairs


def near_duplicate_pairs(
    hashes: np.ndarray, threshold: int = DEFAULT_HAMMING, transforms: bool = True, block: int = 64
) -> list[tuple[int, int, int, int]]:
    """All pairs (i < j) whose pHashes differ in at most ``threshold`` bits.

    ``hashes`` is (N, 8) uint64: each image's pHash under ``TRANSFORMS``. With ``transforms``
    image i is compared against all 8 variants of image j, else only the identity. Returns
    ``(i, j, distance, transform index)`` tuples. Vectorised in row blocks: (block, N, 8) XOR +
    popcount, about 2 s for 6,000 images.
    """
    hashes = np.asarray(hashes, dtype=np.uint64)
    n = len(hashes)
    base = hashes[:, 0]
    variants = hashes if transforms else hashes[:, :1]
    pairs = []
    for start in range(0, n, block):
        stop = min(start + block, n)
        dist = np.bitwise_count(base[start:stop, None, None] ^ variants[None, :, :])  # (b, N, V)
        best = dist.argmin(axis=2)
        best_dist = np.take_along_axis(dist, best[..., None], axis=2)[..., 0]
        rows, cols = np.nonzero(best_dist <= threshold)
        for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
            i = start + r
            if c > i:
                pairs.append((i, c, int(best_dist[r, c]), int(best[r, c])))
    return pairs


class _UnionFind:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        ri, rj = self.find(i), self.find(j)
        if ri != rj:
            self.parent[max(ri, rj)] = min(ri, rj)


# ---------------------------------------------------------------------------------------------
# Confounds: image properties that predict the label

# A property is flagged when it predicts the label far better than chance, in either of two ways:
# * as a whole: bias-corrected Cramer's V (Bergsma 2013) of the property x class table >= CONFOUND_V
#   (a "large" association) with a chi-square test p < CONFOUND_P (all classes at once);
# * through one value: at least SHORTCUT_MIN images share the value, at least SHORTCUT_SHARE of
#   them are one class, and the one-sided hypergeometric probability of that many (were the value
#   independent of the class) is below SHORTCUT_P: e.g. 12 RGBA files all in one class of a 100 / 100
#   set (p = 1.8e-4), a shortcut for those images however weak the property is overall (V = 0.25).
CONFOUND_V = 0.5
CONFOUND_P = 1e-3
SHORTCUT_MIN = 10
SHORTCUT_SHARE = 0.9
SHORTCUT_P = 1e-3
SIZE_EXACT_MAX = 10  # with more distinct 2D sizes, sizes are bucketed by powers of two per side
# (report name, key of describe_image); modality and manufacturer only when there are DICOM files
PROPERTIES = (
    ("colour mode", "photometric"), ("colour content", "content"), ("channels", "channels"),
    ("bit depth", "bit_depth"), ("size", "size"),
    ("format", "format"), ("modality", "modality"), ("manufacturer", "manufacturer"),
)  # fmt: skip


def _band(n: int) -> str:
    low = 1 << (max(int(n), 1).bit_length() - 1)
    return f"{low}-{2 * low - 1}"


def size_buckets(sizes: Sequence[str]) -> list[str]:
    """Each "WxH" size as it is when the set has at most ``SIZE_EXACT_MAX`` distinct sizes, else
    as power-of-two bands per side ("256-511 x 128-255"); volume shapes stay as they are."""
    flat = [s for s in sizes if s.count("x") == 1]
    if len(set(flat)) <= SIZE_EXACT_MAX:
        return [s.replace("x", " x ") if s.count("x") == 1 else s for s in sizes]
    out = []
    for s in sizes:
        if s.count("x") == 1:
            w, h = (int(v) for v in s.split("x"))
            out.append(f"{_band(w)} x {_band(h)}")
        else:
            out.append(s)
    return out


def cramers_v(table: np.ndarray) -> tuple[float, float]:
    """(bias-corrected Cramer's V, chi-square p) of a contingency table with >= 2 rows and columns."""
    from scipy.stats import chi2_contingency  # scipy comes with imagehash / scikit-learn

    table = np.asarray(table, dtype=np.float64)
    table = table[table.sum(axis=1) > 0][:, table.sum(axis=0) > 0]
    n = table.sum()
    r, k = table.shape
    if r < 2 or k < 2 or n < 2:
        return 0.0, 1.0
    chi2, p, _, _ = chi2_contingency(table, correction=False)
    phi2 = max(0.0, chi2 / n - (k - 1) * (r - 1) / (n - 1))
    rows, cols = r - (r - 1) ** 2 / (n - 1), k - (k - 1) ** 2 / (n - 1)
    denominator = min(rows - 1, cols - 1)
    return (float(np.sqrt(phi2 / denominator)) if denominator > 0 else 0.0), float(p)


def _shortcuts(table: np.ndarray, values: Sequence[str], classes: Sequence[str]) -> list[dict]:
    from scipy.stats import hypergeom

    n = int(table.sum())
    per_class = table.sum(axis=0)
    found = []
    for r, value in enumerate(values):
        held = int(table[r].sum())
        if held < SHORTCUT_MIN:
            continue
        c = int(table[r].argmax())
        count = int(table[r, c])
        share, base = count / held, per_class[c] / n
        if share < SHORTCUT_SHARE or share <= base:
            continue
        p = float(hypergeom.sf(count - 1, n, int(per_class[c]), held))
        if p < SHORTCUT_P:
            found.append({"value": value, "class": classes[c], "images": held, "in_class": count,
                          "share": round(share, 3), "class_share": round(float(base), 3), "p_value": p})  # fmt: skip
    return found


def confounds(items: Sequence[Mapping], described: Sequence[Mapping], labels: Sequence[str],
              splits: Sequence[str], multi_label: bool = False) -> dict:  # fmt: skip
    """Counts of each image property per split and class, and the properties that predict the
    label (see ``CONFOUND_V`` / ``SHORTCUT_*``). ``items`` (with ``_split``) and ``described``
    (``describe_image`` results) are the readable images, in the same order. Multi-label sets are
    tested one class at a time (positive / negative)."""
    names = [_label_names(item, labels) for item in items]
    targets = (
        {"label": [n[0] for n in names]}
        if not multi_label
        else {c: [c if c in n else f"not {c}" for n in names] for c in labels}
    )
    has_dicom = any(info.get("format") == "DICOM" for info in described)
    properties, flags = {}, []
    for title, key in PROPERTIES:
        if key in ("modality", "manufacturer") and not has_dicom:
            continue
        values = [str(info.get(key)) if info.get(key) is not None else "unknown" for info in described]
        if key == "size":
            values = size_buckets(values)
            title = (
                "size (W x H)"
                if all(v.count(" x ") == 1 and "-" not in v for v in values)
                else "size bucket (W x H)"
            )
        counts: dict[str, dict[str, dict[str, int]]] = {}
        for item, value, label_names in zip(items, values, names, strict=True):
            split_counts = counts.setdefault(value, {}).setdefault(item["_split"], {})
            for name in label_names:
                split_counts[name] = split_counts.get(name, 0) + 1
        order = sorted(counts, key=lambda v: -sum(sum(c.values()) for c in counts[v].values()))
        entry = {"counts": {v: counts[v] for v in order}, "images": dict(Counter(values).most_common())}
        if len(order) > 1:
            entry["cramers_v"], entry["p_value"] = {}, {}
            for target, classes_of in targets.items():
                classes = sorted(
                    set(classes_of), key=lambda c: (labels.index(c) if c in labels else len(labels), c)
                )
                table = np.zeros((len(order), len(classes)), dtype=np.int64)
                row, col = {v: i for i, v in enumerate(order)}, {c: j for j, c in enumerate(classes)}
                for value, cls in zip(values, classes_of, strict=True):
                    table[row[value], col[cls]] += 1
                v, p = cramers_v(table)
                entry["cramers_v"][target], entry["p_value"][target] = round(v, 3), p
                where = "the label" if target == "label" else f"class {target}"
                if v >= CONFOUND_V and p < CONFOUND_P:
                    flags.append({"property": title, "target": target, "kind": "association", "cramers_v": round(v, 3),
                                  "p_value": p, "text": f"{title} predicts {where}: Cramer's V {v:.2f} "
                                                        f"(bias-corrected; chi-square p = {p:.1e})"})  # fmt: skip
                for s in _shortcuts(table, order, classes):
                    flags.append({"property": title, "target": target, "kind": "shortcut", **s,
                                  "text": f"{title} {s['value']}: {s['in_class']} of its {s['images']} images are "
                                          f"class {s['class']!r}, which holds {s['class_share']:.0%} of all images "
                                          f"(hypergeometric p = {s['p_value']:.1e})"})  # fmt: skip
        properties[title] = entry
    return {
        "found": bool(flags),
        "flags": flags,
        "properties": properties,
        "settings": {
            "association": f"bias-corrected Cramer's V >= {CONFOUND_V} and chi-square p < {CONFOUND_P}",
            "shortcut": f"a value held by >= {SHORTCUT_MIN} images, >= {SHORTCUT_SHARE:.0%} of them one class, "
            f"one-sided hypergeometric p < {SHORTCUT_P}",
            "size": f"exact W x H with up to {SIZE_EXACT_MAX} distinct sizes, else power-of-two bands per side",
            "multi_label": "each class tested as positive / negative" if multi_label else None,
        },
    }


# ---------------------------------------------------------------------------------------------
# The audit


def _flatten_items(doc: Mapping) -> list[dict]:
    items = []
    for split in split_keys(doc):
        for item in doc[split]:
            image = item["image"][0] if isinstance(item["image"], list) else item["image"]
            items.append({**item, "image": image, "_split": split})
    return items


def _common_folder(paths: Sequence[str]) -> str | None:
    """The deepest folder holding all ``paths`` (file names in the report are shown relative to it)."""
    try:
        return os.path.dirname(os.path.commonpath(paths)) if len(paths) == 1 else os.path.commonpath(paths)
    except ValueError:  # empty, or mixed drives / relative and absolute
        return None


def _label_names(item: Mapping, labels: Sequence[str]) -> list[str]:
    label = item.get("label")
    if isinstance(label, (list, tuple)):
        return [labels[k] for k, v in enumerate(label) if v] or ["(none)"]
    try:
        return [labels[int(label)]]
    except (TypeError, ValueError, IndexError):
        return [str(label)]


def _split_pair(a: str, b: str, order: Sequence[str]) -> str:
    a, b = sorted((a, b), key=lambda s: (order.index(s) if s in order else len(order), s))
    return f"{a}|{b}"


def audit_datalist(
    doc: Mapping,
    read_image: ReadImage,
    *,
    threshold: int = DEFAULT_HAMMING,
    transforms: bool = True,
    confirm: int | None = DEFAULT_CONFIRM,
    confirm_pixels: float | None = DEFAULT_PIXEL,
    workers: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Audit a loaded datalist (``toolkit.data.load_datalist``); returns the JSON-ready report.

    ``leakage.found`` is True when a patient, an exact duplicate or a near-duplicate is shared by
    two splits. Duplicates inside one split are counted too (they do not leak, but they inflate
    the apparent size of the set and matter for ``regroup``). A near-duplicate candidate (64-bit
    pHash within ``threshold``) is kept when its 256-bit pHash distance is at most ``confirm``
    and its :func:`pixel_difference` at most ``confirm_pixels`` (``None``: that check is off).
    ``confounds`` holds the image properties per split and class and the ones that predict the
    label (:func:`confounds`). ``read_image``: see ``ReadImage``.
    """
    started = time.perf_counter()
    labels = [str(x) for x in doc["labels"]]
    splits = split_keys(doc)
    items = _flatten_items(doc)
    described = describe_images([it["image"] for it in items], read_image, workers, progress)

    balance = {s: Counter() for s in splits}
    for item in items:
        balance[item["_split"]].update(_label_names(item, labels))
    stats = {key: Counter() for key in ("format", "modality", "manufacturer", "photometric", "content", "bit_depth",
                                        "size", "channels")}  # fmt: skip
    unreadable, ok = [], []
    for index, (item, info) in enumerate(zip(items, described, strict=True)):
        if "error" in info:
            unreadable.append({"image": item["image"], "split": item["_split"], "error": info["error"]})
            continue
        ok.append(index)
        for key in stats:
            if key != "manufacturer" or info.get("format") == "DICOM":
                stats[key][str(info.get(key))] += 1

    def ref(i: int) -> dict:
        return {
            "image": items[i]["image"],
            "split": items[i]["_split"],
            "label": _label_names(items[i], labels),
        }

    # exact duplicates: items sharing decoded pixels (identical files are a subset)
    links: list[tuple[int, int]] = []
    exact_pairs, near_pairs = [], []
    by_pixels: dict[str, list[int]] = defaultdict(list)
    for i in ok:
        by_pixels[described[i]["pixel_sha256"]].append(i)
    exact_set = set()
    for members in by_pixels.values():
        for a_pos, a in enumerate(members):
            for b in members[a_pos + 1 :]:
                same_file = described[a]["file_sha256"] == described[b]["file_sha256"]
                exact_pairs.append((a, b, "identical file" if same_file else "identical pixels"))
                exact_set.add((a, b))
                links.append((a, b))
    # near duplicates
    hashed = [i for i in ok if described[i]["phash"] is not None]  # 2D images
    if hashed:
        hashes = np.array([described[i]["phash"] for i in hashed], dtype=np.uint64)
        for pa, pb, dist, t in near_duplicate_pairs(hashes, threshold, transforms):
            a, b = hashed[pa], hashed[pb]
            if (a, b) in exact_set:
                continue
            fine, pixels, ok_pair = confirm_pair(described[a]["thumb"], described[b]["thumb"], t, confirm,
                                                 confirm_pixels)  # fmt: skip
            if not ok_pair:
                continue
            near_pairs.append((a, b, dist, TRANSFORMS[t], fine, pixels))
            links.append((a, b))

    # patients in more than one split
    patient_splits: dict[str, Counter] = defaultdict(Counter)
    patient_items: dict[str, list[int]] = defaultdict(list)
    for i, item in enumerate(items):
        pid = item.get("patient_id")
        if pid not in (None, ""):
            patient_splits[str(pid)][item["_split"]] += 1
            patient_items[str(pid)].append(i)
    shared_patients = [
        {"patient_id": pid, "splits": dict(counts)}
        for pid, counts in sorted(patient_splits.items())
        if len(counts) > 1
    ]

    by_pair: dict[str, Counter] = defaultdict(Counter)
    within: dict[str, Counter] = defaultdict(Counter)
    cross_exact, cross_near, within_pairs = [], [], []
    for a, b, kind in exact_pairs:
        record = {"a": ref(a), "b": ref(b), "kind": kind}
        sa, sb = items[a]["_split"], items[b]["_split"]
        if sa == sb:
            within[sa]["exact_duplicate_pairs"] += 1
            within_pairs.append(record)
        else:
            by_pair[_split_pair(sa, sb, splits)]["exact_duplicate_pairs"] += 1
            cross_exact.append(record)
    for a, b, dist, transform, fine, pixels in near_pairs:
        record = {"a": ref(a), "b": ref(b), "kind": "near", "hamming": dist, "transform": transform,
                  "hamming_256": fine, "pixel_difference": pixels}  # fmt: skip
        sa, sb = items[a]["_split"], items[b]["_split"]
        if sa == sb:
            within[sa]["near_duplicate_pairs"] += 1
            within_pairs.append(record)
        else:
            by_pair[_split_pair(sa, sb, splits)]["near_duplicate_pairs"] += 1
            cross_near.append(record)
    for entry in shared_patients:
        names = sorted(entry["splits"], key=lambda s: splits.index(s) if s in splits else len(splits))
        for x in range(len(names)):
            for y in range(x + 1, len(names)):
                by_pair[_split_pair(names[x], names[y], splits)]["shared_patients"] += 1

    # images in the test split with a copy elsewhere: the count that inflates test accuracy
    leaked_images: dict[str, set] = defaultdict(set)
    for pair in cross_exact + cross_near:
        for side in ("a", "b"):
            leaked_images[pair[side]["split"]].add(pair[side]["image"])

    # clusters: patients + duplicate links
    uf = _UnionFind(len(items))
    for a, b in links:
        uf.union(a, b)
    for members in patient_items.values():
        for other in members[1:]:
            uf.union(members[0], other)
    cluster_sizes = Counter(uf.find(i) for i in range(len(items)))

    return {
        "datalist": doc.get("_path"),
        "name": doc.get("name"),
        "labels": labels,
        "num_items": len(items),
        "image_root": _common_folder([it["image"] for it in items]),
        "splits": {s: len(doc[s]) for s in splits},
        "class_balance": {s: {name: balance[s].get(name, 0) for name in labels} for s in splits},
        "image_stats": {k: dict(v.most_common()) for k, v in stats.items()},
        "confounds": confounds(
            [items[i] for i in ok], [described[i] for i in ok], labels, splits, bool(doc.get("multi_label"))
        ),
        "unreadable": unreadable,
        "leakage": {
            "found": bool(shared_patients or cross_exact or cross_near),
            "shared_patients": shared_patients,
            "exact_duplicates": cross_exact,
            "near_duplicates": cross_near,
            "counts_by_split_pair": {k: dict(v) for k, v in sorted(by_pair.items())},
            "images_with_a_copy_in_another_split": {s: len(v) for s, v in leaked_images.items()},
        },
        "within_split": {s: dict(within[s]) for s in splits if within[s]},
        "within_split_pairs": within_pairs,
        "clusters": {
            "count": len(cluster_sizes),
            "largest": max(cluster_sizes.values(), default=0),
            "multi_item": sum(1 for v in cluster_sizes.values() if v > 1),
        },
        "settings": {
            "hash": "imagehash.phash of a min-max scaled 64x64 grey thumbnail: 64 bits to find, 256 to confirm",
            "hamming_threshold": threshold,
            "rotations_and_flips": transforms,
            "confirm_hamming_256": confirm,
            "confirm_pixel_difference": confirm_pixels,
            "pixel_difference": f"mean absolute difference of the {PIXEL_SIZE}x{PIXEL_SIZE} grey thumbnails under "
            "the matched rotation / flip, each scaled to mean 0 and SD 1",
            "exact": "sha256 of file bytes and of decoded pixels",
            "volumes_checked_for_exact_duplicates_only": len(ok) - len(hashed),
        },
        "elapsed_seconds": round(time.perf_counter() - started, 1),
        "_groups": [uf.find(i) for i in range(len(items))],
    }


def regroup(doc: Mapping, report: Mapping, seed: int = 0) -> dict[str, list[dict]]:
    """The same split with each patient and each duplicate cluster in one split: a cluster that
    spans splits moves whole into the split holding most of its images (a tie goes to the split
    furthest below its original size, then to a seeded random choice); every other image stays
    where it was. Moved items get ``audit_moved_from``; all items get ``audit_group``."""
    names = split_keys(doc)
    flat, home = [], []
    for split in names:
        for item in doc[split]:
            flat.append(dict(item))
            home.append(split)
    groups = report["_groups"]
    if len(groups) != len(flat):
        raise ValueError("the report does not belong to this datalist")
    members: dict[int, list[int]] = defaultdict(list)
    for index, group in enumerate(groups):
        members[group].append(index)
    sizes = Counter(home)
    original = dict(sizes)
    rng = np.random.default_rng(seed)
    target = list(home)
    spanning = [g for g, idx in members.items() if len({home[i] for i in idx}) > 1]
    for group in sorted(spanning, key=lambda g: (-len(members[g]), g)):
        idx = members[group]
        here = Counter(home[i] for i in idx)
        noise = {s: rng.random() for s in here}
        dest = max(here, key=lambda s: (here[s], original[s] - sizes[s], noise[s]))
        for i in idx:
            if target[i] != dest:
                sizes[target[i]] -= 1
                sizes[dest] += 1
                target[i] = dest
    result: dict[str, list[dict]] = {s: [] for s in names}
    for index, (item, group) in enumerate(zip(flat, groups, strict=True)):
        item["audit_group"] = f"g{group}"
        if target[index] != home[index]:
            item["audit_moved_from"] = home[index]
        item["split"] = target[index]
        result[target[index]].append(item)
    check_no_leakage(result, "audit_group")
    check_no_leakage(result, "patient_id")
    return result


# ---------------------------------------------------------------------------------------------
# Output


def _table(rows: list[list], header: list[str]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return out


def _short(path: str, root: str | None) -> str:
    if root:
        try:
            return os.path.relpath(path, root)
        except ValueError:
            pass
    return path


def audit_markdown(report: Mapping) -> str:
    """A readable summary of an audit report."""
    root = report.get("image_root")
    leak = report["leakage"]
    lines = [f"# Data audit: {report.get('name') or report.get('datalist')}", ""]
    lines.append(f"Datalist: `{report.get('datalist')}`, {report['num_items']} items under "
                 f"`{root}` (paths below are relative to it), "
                 f"{len(report['unreadable'])} unreadable, audited in {report['elapsed_seconds']} s.")  # fmt: skip
    verdict = "**LEAKAGE FOUND**" if leak["found"] else "No leakage found"
    lines += ["", f"## Verdict: {verdict}", ""]
    counts = leak["counts_by_split_pair"]
    if counts:
        rows = [[pair.replace("|", " / "), c.get("shared_patients", 0), c.get("exact_duplicate_pairs", 0),
                 c.get("near_duplicate_pairs", 0)] for pair, c in counts.items()]  # fmt: skip
        lines += _table(
            rows, ["split pair", "shared patients", "exact duplicate pairs", "near-duplicate pairs"]
        )
        lines.append("")
    copies = leak.get("images_with_a_copy_in_another_split", {})
    if copies:
        lines.append("Images with an exact or near copy in another split: "
                     + ", ".join(f"{s} {n} of {report['splits'].get(s, '?')}" for s, n in copies.items()) + ".")  # fmt: skip
        lines.append("")
    s = report["settings"]
    lines.append(f"Near-duplicates: 64-bit pHash Hamming distance <= {s['hamming_threshold']}"
                 f"{' (also against the 8 rotations / flips)' if s['rotations_and_flips'] else ''}"
                 + (f", confirmed by 256-bit pHash distance <= {s['confirm_hamming_256']}"
                    if s["confirm_hamming_256"] is not None else "")
                 + (f" and on the pixels: {s['pixel_difference']} <= {s['confirm_pixel_difference']}"
                    if s.get("confirm_pixel_difference") is not None else "") + ".")  # fmt: skip
    found = report.get("confounds", {})
    if found.get("flags"):
        lines += [
            "",
            "**CONFOUND FOUND**: an image property predicts the label (details under Confounds):",
            "",
        ]
        lines += [f"- {flag['text']}" for flag in found["flags"]]
    if s.get("volumes_checked_for_exact_duplicates_only"):
        lines.append(f"{s['volumes_checked_for_exact_duplicates_only']} volumes were checked for exact duplicates "
                     "only (perceptual hashes of volumes matched different patients).")  # fmt: skip

    lines += ["", "## Class balance", ""]
    splits = list(report["splits"])
    rows = [[name, *(report["class_balance"][sp].get(name, 0) for sp in splits)] for name in report["labels"]]
    rows.append(["**total**", *(report["splits"][sp] for sp in splits)])
    lines += _table(rows, ["class", *splits])

    lines += ["", "## Images", ""]
    for key, title in (("format", "format"), ("modality", "modality"), ("manufacturer", "manufacturer (DICOM)"),
                       ("photometric", "colour mode (DICOM photometric interpretation / Pillow mode)"),
                       ("content", "colour content (grey: the colour channels agree)"),
                       ("bit_depth", "bit depth"), ("channels", "channels as stored (RGBA = 4)"),
                       ("size", "size (W x H, width first; volumes: voxel shape)")):  # fmt: skip
        values = report["image_stats"].get(key, {})
        if key == "manufacturer" and not values:
            continue
        shown = ", ".join(f"{k}: {v}" for k, v in list(values.items())[:12])
        more = f" (+{len(values) - 12} more)" if len(values) > 12 else ""
        lines.append(f"- {title}: {shown or '-'}{more}")
    lines += _confound_markdown(report)
    if report["unreadable"]:
        lines += ["", "## Unreadable files", ""]
        lines += _table([[_short(u["image"], root), u["split"], u["error"]] for u in report["unreadable"][:_SHOW]],
                        ["file", "split", "error"])  # fmt: skip
    within = report.get("within_split", {})
    if within:
        lines += ["", "## Duplicates inside one split (not leakage, but they shrink the effective set)", ""]
        rows = [
            [sp, c.get("exact_duplicate_pairs", 0), c.get("near_duplicate_pairs", 0)]
            for sp, c in within.items()
        ]
        lines += _table(rows, ["split", "exact duplicate pairs", "near-duplicate pairs"])

    if leak["shared_patients"]:
        lines += ["", f"## Patients in more than one split ({len(leak['shared_patients'])})", ""]
        rows = [[p["patient_id"], ", ".join(f"{k} {v}" for k, v in p["splits"].items())]
                for p in leak["shared_patients"][:_SHOW]]  # fmt: skip
        lines += _table(rows, ["patient_id", "images per split"])
    if leak["exact_duplicates"]:
        lines += ["", f"## Exact duplicates across splits ({len(leak['exact_duplicates'])} pairs)", ""]
        rows = [[_short(p["a"]["image"], root), p["a"]["split"], _short(p["b"]["image"], root), p["b"]["split"],
                 p["kind"]] for p in leak["exact_duplicates"][:_SHOW]]  # fmt: skip
        lines += _table(rows, ["image", "split", "duplicate", "split", "kind"])
    if leak["near_duplicates"]:
        lines += ["", f"## Near-duplicates across splits ({len(leak['near_duplicates'])} pairs)", ""]
        ordered = sorted(leak["near_duplicates"], key=lambda p: (p["hamming_256"], p["hamming"]))
        rows = [[_short(p["a"]["image"], root), p["a"]["split"], _short(p["b"]["image"], root), p["b"]["split"],
                 p["hamming"], p["hamming_256"], p.get("pixel_difference", "-"), p["transform"]]
                for p in ordered[:_SHOW]]  # fmt: skip
        lines += _table(
            rows, ["image", "split", "near-duplicate", "split", "Hamming 64", "Hamming 256", "pixel difference",
                   "transform"],
        )  # fmt: skip
    listed = max(len(leak["exact_duplicates"]), len(leak["near_duplicates"]), len(leak["shared_patients"]))
    if listed > _SHOW:
        lines += ["", f"(first {_SHOW} rows per table; audit.json lists all)"]
    c = report["clusters"]
    lines += ["", "## Fix", "",
              f"Linking patients and duplicates gives {c['count']} groups ({c['multi_item']} with more than one "
              f"image, the largest has {c['largest']})."]  # fmt: skip
    if report.get("regrouped_datalist"):
        lines.append(
            f"A regrouped datalist that keeps each group in one split: `{report['regrouped_datalist']}`. "
            f"It moves {report.get('regrouped_moved', 0)} image(s) of groups that spanned splits into the split "
            "holding most of the group; every other image keeps its split."
        )
        summary = report.get("regrouped_splits")
        if summary:
            lines.append("Its split sizes: " + ", ".join(f"{k} {v}" for k, v in summary.items()) + ".")
    return "\n".join(lines) + "\n"


def _confound_markdown(report: Mapping) -> list[str]:
    found = report.get("confounds")
    if not found:
        return []
    s = found["settings"]
    lines = ["", "## Confounds: image properties per split and class", "",
             f"A property is flagged when it predicts the label far better than chance: {s['association']}, or "
             f"{s['shortcut']}. Sizes: {s['size']}."]  # fmt: skip
    if s.get("multi_label"):
        lines.append("Multi-label: " + s["multi_label"] + "; the counts are positives per class.")
    lines += ["", "**Flagged:**" if found["flags"] else "No property is flagged.", ""]
    lines += [f"- {flag['text']}" for flag in found["flags"]]
    constant = {t: next(iter(e["images"])) for t, e in found["properties"].items() if len(e["images"]) == 1}
    if constant:
        lines += ["", "The same for every image: " + ", ".join(f"{t} {v}" for t, v in constant.items()) + "."]
    splits, labels = list(report["splits"]), list(report["labels"])
    columns = [(sp, c) for sp in splits for c in labels]
    wide = len(columns) > 16
    for title, entry in found["properties"].items():
        if title in constant:
            continue
        v = entry.get("cramers_v", {})
        stat = ", ".join(f"{'' if t == 'label' else t + ': '}V {x}" for t, x in list(v.items())[:6])
        lines += ["", f"### {title} ({stat})", ""]
        shown = list(entry["counts"].items())[:_SHOW]
        if wide:  # many splits x classes: one column per class, all splits together
            rows = [[value, *(sum(c.get(name, 0) for c in per.values()) for name in labels), entry["images"][value]]
                    for value, per in shown]  # fmt: skip
            lines += _table(rows, [title, *labels, "images"])
        else:
            rows = [[value, *(per.get(sp, {}).get(name, 0) for sp, name in columns), entry["images"][value]]
                    for value, per in shown]  # fmt: skip
            lines += _table(rows, [title, *(f"{sp}: {name}" for sp, name in columns), "images"])
        if len(entry["counts"]) > _SHOW:
            lines.append(f"(first {_SHOW} of {len(entry['counts'])} values; audit.json lists all)")
    return lines


def write_audit(report: Mapping, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write ``audit.json`` and ``audit.md`` to ``out_dir`` (atomically)."""
    out_dir = Path(out_dir)
    public = {k: v for k, v in report.items() if not k.startswith("_")}
    return {
        "json": atomic_write_json(out_dir / "audit.json", public),
        "markdown": atomic_write_text(out_dir / "audit.md", audit_markdown(report)),
    }


# Files beside the images that are not images to audit (label tables, notes) and folders that hold
# segmentation masks: not listed as unaudited.
_METADATA_SUFFIXES = (
    ".csv",
    ".tsv",
    ".json",
    ".txt",
    ".md",
    ".yaml",
    ".yml",
    ".xml",
    ".xlsx",
    ".pdf",
    ".html",
)
_METADATA_NAMES = ("license", "readme", "dicomdir")


def not_audited(root: str | os.PathLike, audited: Iterable[str]) -> list[dict]:
    """Every file below the folder ``root`` that is not among ``audited`` (image paths of the datalist), as
    ``{"image", "split": None, "error"}`` with the reason it was left out: a zero-byte file, a link that
    loops or points nowhere, a folder that cannot be listed, a file that is not an image, an unreadable
    image (a PNG bomb, a DICOM object without pixels such as an SR or RT plan), or an image the datalist
    did not take (no class). Hidden entries, metadata files (CSV, JSON, text ...) and mask folders are
    skipped. Reasons hold no full path."""
    root = Path(root)
    seen = set()
    for image in audited:
        seen.update({os.path.abspath(image), os.path.realpath(image)})
    missing: list[dict] = []

    def unlistable(exc: OSError) -> None:
        missing.append(
            {
                "image": str(exc.filename or root),
                "split": None,
                "error": f"cannot list folder: {exc.strerror or type(exc).__name__}",
            }
        )

    for dirpath, dirnames, filenames in os.walk(root, onerror=unlistable):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d.lower() not in MASK_FOLDERS)
        for name in sorted(filenames):
            lowered = name.lower()
            if name.startswith(".") or lowered.endswith(_METADATA_SUFFIXES) or lowered in _METADATA_NAMES:
                continue
            path = os.path.join(dirpath, name)
            if os.path.abspath(path) in seen:
                continue
            missing.append({"image": path, "split": None, "error": _why_not_audited(Path(path))})
    return missing


def _why_not_audited(path: Path) -> str:
    try:
        st = path.stat()
    except OSError as exc:
        if os.path.islink(path):
            return "symbolic link loop" if exc.errno == errno.ELOOP else "dangling symbolic link (no target)"
        return f"cannot read: {exc.strerror or type(exc).__name__}"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file (FIFO, socket or device)"
    if st.st_size == 0:
        return "empty file (0 bytes)"
    kind = file_kind(path)
    if kind is None:
        return "not an image (PNG/JPEG/DICOM/NIfTI)"
    try:
        with warnings.catch_warnings():  # pydicom quotes values (patient data) and paths in warnings
            warnings.simplefilter("ignore")
            check_image(path, kind)
    except UnreadableImage as err:
        return _without_path(err.reason, str(path))
    return "not in the datalist (no class or label found for it)"


def _without_path(text: str, path: str) -> str:
    """``text`` with the file's full path (as given or resolved) replaced by its name."""
    for form in sorted({path, os.path.abspath(path), os.path.realpath(path)}, key=len, reverse=True):
        text = text.replace(form, os.path.basename(path))
    return text


def run_audit(
    source: str | os.PathLike,
    out_dir: str | os.PathLike,
    read_image: ReadImage,
    *,
    threshold: int = DEFAULT_HAMMING,
    transforms: bool = True,
    confirm: int | None = DEFAULT_CONFIRM,
    confirm_pixels: float | None = DEFAULT_PIXEL,
    workers: int = 1,
    write_regrouped: bool = True,
    seed: int = 0,
    **build_kwargs,
) -> dict:
    """Audit a datalist JSON, or any source ``toolkit.data.build_datalist`` takes (folder, CSV,
    MedMNIST .npz; the built datalist goes to ``out_dir/datalist.json``); write the report and,
    with ``write_regrouped``, ``out_dir/datalist_regrouped.json``. Returns the report.
    ``read_image``: see ``ReadImage``; ``cit audit`` passes the toolkit's readers."""
    out_dir = Path(out_dir).expanduser().resolve()
    source = Path(source).expanduser().resolve()
    if source.is_file() and source.suffix.lower() == ".json":
        datalist_path = source
    else:
        datalist_path = build_datalist(source, out_dir / "datalist.json", **build_kwargs)
    doc = load_datalist(datalist_path)
    doc["_path"] = str(datalist_path)

    def progress(done: int, total: int) -> None:
        logger.info("audit: %d / %d images read", done, total)

    report = audit_datalist(
        doc, read_image, threshold=threshold, transforms=transforms, confirm=confirm,
        confirm_pixels=confirm_pixels, workers=workers, progress=progress,
    )  # fmt: skip
    for entry in report["unreadable"]:  # reasons name the file, not its full path (that is its own field)
        entry["error"] = _without_path(entry["error"], entry["image"])
    if source.is_dir():  # every file of the folder that was not audited, with its reason
        report["unreadable"] += not_audited(
            source,
            [it["image"] for sp in split_keys(doc) for it in doc[sp] if isinstance(it.get("image"), str)],
        )
    if write_regrouped:
        splits = regroup(doc, report, seed)
        meta = {k: v for k, v in doc.items() if k in ("name", "description")}
        path = save_datalist(out_dir / "datalist_regrouped.json", splits, doc["labels"],
                             multi_label=bool(doc.get("multi_label")), regrouped_from=str(datalist_path),
                             group_key="audit_group", seed=seed, **meta)  # fmt: skip
        report["regrouped_datalist"] = str(path)
        report["regrouped_splits"] = {k: len(v) for k, v in splits.items()}
        report["regrouped_moved"] = sum(
            1 for v in splits.values() for item in v if "audit_moved_from" in item
        )
    report["outputs"] = {k: str(v) for k, v in write_audit(report, out_dir).items()}
    return report
