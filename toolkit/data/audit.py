"""Data-set audit: class balance, image properties, unreadable files and train/test leakage.

Published results of 99-100% accuracy often come from splits that put one patient, or augmented
copies of one image, in both training and test. The audit looks for exactly that:

* the same ``patient_id`` in two splits;
* exact duplicates: identical file bytes, or identical decoded pixels (a re-encoded copy, or
  DICOM files differing only in their header);
* near-duplicates: perceptual hashes (``imagehash.phash``, 64 bits) within a Hamming distance,
  by default also against the 8 rotations / flips of the other image, as augmented copies are
  often rotated or mirrored; each candidate is confirmed with a finer 256-bit pHash.

Every image is decoded once by the caller's ``read_image`` (``cit audit`` passes the toolkit's
readers, so DICOM / NIfTI / PNG / JPEG all work): the readers live in ``toolkit.transforms``, a
layer above this one, so the audit takes the function instead of importing them. A file that
cannot be read is reported and skipped. Hash pairs are compared with numpy popcounts in blocks,
which handles ~6,000 images in seconds. ``regroup`` offers the fix: a new split in which every
patient and every cluster of duplicates stays inside one split.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image

from toolkit.data.datalist import build_datalist, load_datalist, save_datalist, split_keys
from toolkit.data.files import file_kind
from toolkit.data.headers import dicom_header, nifti_header, raster_header
from toolkit.data.splits import check_no_leakage, split_items
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
THUMB = 64  # grey thumbnail kept per image: input of both hashes
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
            "photometric": str(ds.get("PhotometricInterpretation", "") or "unknown"),
            "bit_depth": _int_or_none(ds.get("BitsStored")) or None,
            "frames": _int_or_none(ds.get("NumberOfFrames")) or 1,
        }
    if kind == "nifti":
        img = nifti_header(path)
        return {
            "format": "NIfTI",
            "modality": "unknown",
            "photometric": "volume",
            "bit_depth": int(np.dtype(img.get_data_dtype()).itemsize * 8),
            "frames": 1,
        }
    info = raster_header(path)
    mode = info["mode"]
    bits = 16 if mode.startswith("I;16") else _BITS_OF_MODE.get(mode)
    return {"format": info["format"] or "raster", "modality": "unknown", "photometric": mode, "bit_depth": bits,
            "frames": info["frames"]}  # fmt: skip


def describe_image(path: str | os.PathLike, read_image: ReadImage) -> dict:
    """Header facts, hashes and thumbnail of one image; ``{"image", "error"}`` if it cannot be read.

    Keys: ``format``, ``modality``, ``photometric`` (DICOM Photometric Interpretation, or the
    Pillow mode of PNG / JPEG files), ``bit_depth``, ``size`` ("HxW" or the volume shape),
    ``file_sha256``, ``pixel_sha256`` (of the decoded array and its shape), ``phash`` (8 ints: the
    64-bit pHash of the image under each of ``TRANSFORMS``) and ``thumb`` (64x64 uint8).
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
    shape = arr.shape[:2] if kind != "nifti" else arr.shape
    return {
        "image": path,
        "kind": kind,
        **facts,
        "size": "x".join(str(int(s)) for s in shape),
        "channels": int(arr.shape[2]) if kind != "nifti" and arr.ndim == 3 else 1,
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
    workers: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Audit a loaded datalist (``toolkit.data.load_datalist``); returns the JSON-ready report.

    ``leakage.found`` is True when a patient, an exact duplicate or a near-duplicate is shared by
    two splits. Duplicates inside one split are counted too (they do not leak, but they inflate
    the apparent size of the set and matter for ``regroup``). ``read_image``: see ``ReadImage``.
    """
    started = time.perf_counter()
    labels = [str(x) for x in doc["labels"]]
    splits = split_keys(doc)
    items = _flatten_items(doc)
    described = describe_images([it["image"] for it in items], read_image, workers, progress)

    balance = {s: Counter() for s in splits}
    for item in items:
        balance[item["_split"]].update(_label_names(item, labels))
    stats = {key: Counter() for key in ("format", "modality", "photometric", "bit_depth", "size", "channels")}
    unreadable, ok = [], []
    for index, (item, info) in enumerate(zip(items, described, strict=True)):
        if "error" in info:
            unreadable.append({"image": item["image"], "split": item["_split"], "error": info["error"]})
            continue
        ok.append(index)
        for key in stats:
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
            fine = phash256_distance(described[a]["thumb"], described[b]["thumb"], t)
            if confirm is not None and fine > confirm:
                continue
            near_pairs.append((a, b, dist, TRANSFORMS[t], fine))
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
    for a, b, dist, transform, fine in near_pairs:
        record = {"a": ref(a), "b": ref(b), "kind": "near", "hamming": dist, "transform": transform,
                  "hamming_256": fine}  # fmt: skip
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
            "exact": "sha256 of file bytes and of decoded pixels",
            "volumes_checked_for_exact_duplicates_only": len(ok) - len(hashed),
        },
        "elapsed_seconds": round(time.perf_counter() - started, 1),
        "_groups": [uf.find(i) for i in range(len(items))],
    }


def regroup(doc: Mapping, report: Mapping, seed: int = 0) -> dict[str, list[dict]]:
    """A new split of the same items in which each patient and each duplicate cluster stays in
    one split (``toolkit.data.split_items`` grouped by the cluster, stratified by label), with
    the split sizes of the original datalist as ratios. Items get an ``audit_group`` key."""
    names = split_keys(doc)
    flat = []
    for split in names:
        flat.extend(dict(item) for item in doc[split])
    groups = report["_groups"]
    if len(groups) != len(flat):
        raise ValueError("the report does not belong to this datalist")
    for item, group in zip(flat, groups, strict=True):
        item["audit_group"] = f"g{group}"
        item.pop("split", None)
    ratios = {s: len(doc[s]) for s in names if doc[s]}
    result = split_items(flat, ratios, seed=seed, group_key="audit_group")
    check_no_leakage(result, "audit_group")
    check_no_leakage(result, "patient_id")
    for split, members in result.items():
        for item in members:
            item["split"] = split
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
                    if s["confirm_hamming_256"] is not None else "") + ".")  # fmt: skip
    if s.get("volumes_checked_for_exact_duplicates_only"):
        lines.append(f"{s['volumes_checked_for_exact_duplicates_only']} volumes were checked for exact duplicates "
                     "only (perceptual hashes of volumes matched different patients).")  # fmt: skip

    lines += ["", "## Class balance", ""]
    splits = list(report["splits"])
    rows = [[name, *(report["class_balance"][sp].get(name, 0) for sp in splits)] for name in report["labels"]]
    rows.append(["**total**", *(report["splits"][sp] for sp in splits)])
    lines += _table(rows, ["class", *splits])

    lines += ["", "## Images", ""]
    for key, title in (("format", "format"), ("modality", "modality"), ("photometric", "photometric / mode"),
                       ("bit_depth", "bit depth"), ("channels", "channels"), ("size", "size")):  # fmt: skip
        values = report["image_stats"].get(key, {})
        shown = ", ".join(f"{k}: {v}" for k, v in list(values.items())[:12])
        more = f" (+{len(values) - 12} more)" if len(values) > 12 else ""
        lines.append(f"- {title}: {shown or '-'}{more}")
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
                 p["hamming"], p["hamming_256"], p["transform"]] for p in ordered[:_SHOW]]  # fmt: skip
        lines += _table(
            rows, ["image", "split", "near-duplicate", "split", "Hamming 64", "Hamming 256", "transform"]
        )
    listed = max(len(leak["exact_duplicates"]), len(leak["near_duplicates"]), len(leak["shared_patients"]))
    if listed > _SHOW:
        lines += ["", f"(first {_SHOW} rows per table; audit.json lists all)"]
    c = report["clusters"]
    lines += ["", "## Fix", "",
              f"Linking patients and duplicates gives {c['count']} groups ({c['multi_item']} with more than one "
              f"image, the largest has {c['largest']})."]  # fmt: skip
    if report.get("regrouped_datalist"):
        lines.append(
            f"A regrouped datalist that keeps each group in one split: `{report['regrouped_datalist']}`."
        )
        summary = report.get("regrouped_splits")
        if summary:
            lines.append("Its split sizes: " + ", ".join(f"{k} {v}" for k, v in summary.items()) + ".")
    return "\n".join(lines) + "\n"


def write_audit(report: Mapping, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write ``audit.json`` and ``audit.md`` to ``out_dir`` (atomically)."""
    out_dir = Path(out_dir)
    public = {k: v for k, v in report.items() if not k.startswith("_")}
    return {
        "json": atomic_write_json(out_dir / "audit.json", public),
        "markdown": atomic_write_text(out_dir / "audit.md", audit_markdown(report)),
    }


def run_audit(
    source: str | os.PathLike,
    out_dir: str | os.PathLike,
    read_image: ReadImage,
    *,
    threshold: int = DEFAULT_HAMMING,
    transforms: bool = True,
    confirm: int | None = DEFAULT_CONFIRM,
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
        doc, read_image, threshold=threshold, transforms=transforms, confirm=confirm, workers=workers,
        progress=progress,
    )  # fmt: skip
    if write_regrouped:
        splits = regroup(doc, report, seed)
        meta = {k: v for k, v in doc.items() if k in ("name", "description")}
        path = save_datalist(out_dir / "datalist_regrouped.json", splits, doc["labels"],
                             multi_label=bool(doc.get("multi_label")), regrouped_from=str(datalist_path),
                             group_key="audit_group", seed=seed, **meta)  # fmt: skip
        report["regrouped_datalist"] = str(path)
        report["regrouped_splits"] = {k: len(v) for k, v in splits.items()}
    report["outputs"] = {k: str(v) for k, v in write_audit(report, out_dir).items()}
    return report
