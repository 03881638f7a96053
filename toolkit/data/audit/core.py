"""The audit of a datalist, the regrouped split that fixes its leakage, and run_audit that writes both."""

from __future__ import annotations

import logging
import os
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from toolkit.data.audit.confounding import confounds
from toolkit.data.audit.embeddings import (
    DEFAULT_MIN_INLIERS,
    DEFAULT_MIN_SIMILARITY,
    DEFAULT_NEIGHBOURS,
    BatchEmbedding,
    Embedder,
    EmbeddingCache,
    default_cache_dir,
)
from toolkit.data.audit.images import (
    DEFAULT_CONFIRM,
    DEFAULT_HAMMING,
    DEFAULT_PIXEL,
    PIXEL_SIZE,
    ReadImage,
    describe_images,
)
from toolkit.data.audit.items import common_folder, flatten_items, label_names_of, split_pair
from toolkit.data.audit.pairs import embedding_pairs, exact_pairs, hash_pairs
from toolkit.data.audit.report import write_audit
from toolkit.data.audit.unaudited import not_audited, without_path
from toolkit.data.datalist import build_datalist, load_datalist, save_datalist, split_keys
from toolkit.data.splits import UnionFind, check_no_leakage

logger = logging.getLogger(__package__)  # "toolkit.data.audit", the name of the module this was split from


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
    embedder: Embedder | None = None,
    neighbours: int = DEFAULT_NEIGHBOURS,
    min_similarity: float = DEFAULT_MIN_SIMILARITY,
    min_inliers: int = DEFAULT_MIN_INLIERS,
    embedding_cache: str | os.PathLike | None | bool = None,
) -> dict:
    """Audit a loaded datalist (``toolkit.data.load_datalist``); returns the JSON-ready report.

    ``leakage.found`` is True when a patient, an exact duplicate or a near-duplicate is shared by
    two splits. Duplicates inside one split are counted too (they do not leak, but they inflate
    the apparent size of the set and matter for ``regroup``). A near-duplicate candidate (64-bit
    pHash within ``threshold``) is kept when its 256-bit pHash distance is at most ``confirm``
    and its :func:`pixel_difference` at most ``confirm_pixels`` (``None``: that check is off).
    ``confounds`` holds the image properties per split and class and the ones that predict the
    label (:func:`confounds`). ``read_image``: see ``ReadImage``.

    With an ``embedder`` (``toolkit.networks.embeddings.ImageEmbedder``) a second near-duplicate
    stage runs on the 2D images (``toolkit.data.audit.embeddings``): each image's ``neighbours``
    nearest embeddings with cosine similarity >= ``min_similarity`` are candidates, confirmed when
    at least ``min_inliers`` keypoints of the two grey thumbnails fit one similarity transform. Features are cached by file SHA-256
    in ``embedding_cache`` (None: ``default_cache_dir()``; False: no cache).
    """
    started = time.perf_counter()
    labels = [str(x) for x in doc["labels"]]
    splits = split_keys(doc)
    items = flatten_items(doc)
    batches = _embedding_batches(embedder, embedding_cache)
    described = _describe(items, read_image, workers, progress, embedder, batches)
    tally = _tally(items, described, labels, splits)
    ok = tally["ok"]
    hashing = {
        "threshold": threshold,
        "transforms": transforms,
        "confirm": confirm,
        "confirm_pixels": confirm_pixels,
    }
    embedding = {"neighbours": neighbours, "min_similarity": min_similarity, "min_inliers": min_inliers}
    exact, near, embedding_summary = _duplicate_pairs(
        described, ok, batches, hashing, embedding, workers, progress
    )
    leakage, within, within_pairs, groups = _leakage_and_groups(items, labels, splits, exact, near)
    return {
        **_overview(doc, items, described, labels, splits, tally),
        "leakage": leakage,
        "within_split": {s: dict(within[s]) for s in splits if within[s]},
        "within_split_pairs": within_pairs,
        "clusters": _cluster_summary(groups),
        "settings": _settings(hashing, described, ok, embedder, embedding, embedding_summary),
        "elapsed_seconds": round(time.perf_counter() - started, 1),
        "_groups": groups,
    }


def _duplicate_pairs(described, ok, batches, hashing: dict, embedding: dict, workers, progress):
    """``(exact, near, embedding summary)``: the exact duplicate pairs, the near-duplicates of the
    perceptual hashes and (with ``batches``) of the embedding stage; the summary is None without it.
    The registration thumbnails are dropped from ``described`` afterwards."""
    exact = exact_pairs(described, ok)
    near = hash_pairs(described, ok, {(a, b) for a, b, _ in exact}, **hashing)
    embedding_summary = None
    if batches is not None:
        found = {(a, b) for a, b, _ in exact} | {(p["a"], p["b"]) for p in near}
        more, embedding_summary = embedding_pairs(described, ok, batches, found, embedding, workers, progress)
        near += more
    for info in described:
        info.pop("reg_thumb", None)
    return exact, near, embedding_summary


def _overview(doc: Mapping, items, described, labels: list[str], splits: list[str], tally: dict) -> dict:
    """The report's first part: the datalist, its splits and class balance, the image properties and
    their confounds, the unreadable files."""
    ok = tally["ok"]
    return {
        "datalist": doc.get("_path"),
        "name": doc.get("name"),
        "labels": labels,
        "num_items": len(items),
        "image_root": common_folder([it["image"] for it in items]),
        "splits": {s: len(doc[s]) for s in splits},
        "class_balance": {s: {name: tally["balance"][s].get(name, 0) for name in labels} for s in splits},
        "image_stats": {k: dict(v.most_common()) for k, v in tally["stats"].items()},
        "confounds": confounds(
            [items[i] for i in ok], [described[i] for i in ok], labels, splits, bool(doc.get("multi_label"))
        ),
        "unreadable": tally["unreadable"],
    }


def _cluster_summary(groups: list[int]) -> dict:
    """How many clusters, the largest, and how many hold more than one item."""
    cluster_sizes = Counter(groups)
    return {
        "count": len(cluster_sizes),
        "largest": max(cluster_sizes.values(), default=0),
        "multi_item": sum(1 for v in cluster_sizes.values() if v > 1),
    }


def _leakage_and_groups(items, labels, splits, exact: list[tuple], near: list[dict]) -> tuple:
    """``(leakage, within, within_pairs, groups)``: see ``_leakage``; each item's cluster (``_groups``)
    linking its duplicates and its patient's other items."""
    patients = _patients(items)
    leakage, within, within_pairs = _leakage(items, labels, splits, exact, near, patients["shared"])
    links = [(a, b) for a, b, _ in exact] + [(p["a"], p["b"]) for p in near]
    return leakage, within, within_pairs, _groups(len(items), links, patients["items"])


def _settings(
    hashing: dict, described, ok, embedder: Embedder | None, embedding: dict, embedding_summary
) -> dict:
    """The rules and thresholds the audit applied, as the report records them."""
    return {
        "hash": "imagehash.phash of a min-max scaled 64x64 grey thumbnail: 64 bits to find, 256 to confirm",
        "hamming_threshold": hashing["threshold"],
        "rotations_and_flips": hashing["transforms"],
        "confirm_hamming_256": hashing["confirm"],
        "confirm_pixel_difference": hashing["confirm_pixels"],
        "pixel_difference": f"mean absolute difference of the {PIXEL_SIZE}x{PIXEL_SIZE} grey thumbnails under "
        "the matched rotation / flip, each scaled to mean 0 and SD 1",
        "exact": "sha256 of file bytes and of decoded pixels",
        "volumes_checked_for_exact_duplicates_only": sum(1 for i in ok if described[i]["phash"] is None),
        "embedding_stage": None
        if embedder is None
        else {
            "embedder": embedder.name,
            **embedding,
            **(embedding_summary or {}),
            "rule": EMBEDDING_RULE,
        },
    }


EMBEDDING_RULE = (
    "among each image's k nearest embeddings, cosine similarity >= min_similarity; confirmed when >= min_inliers "
    "SIFT keypoints of the 224 px grey thumbnails fit one similarity transform (RANSAC, 2 px; the second image "
    "also mirrored)"
)


def _embedding_batches(embedder: Embedder | None, embedding_cache) -> BatchEmbedding | None:
    if embedder is None:
        return None
    if embedding_cache is False:
        return BatchEmbedding(embedder, None)
    folder = default_cache_dir() if embedding_cache in (None, True) else embedding_cache
    return BatchEmbedding(embedder, EmbeddingCache(folder, embedder.name))


def _describe(items, read_image, workers, progress, embedder, batches) -> list[dict]:
    """Each item's description (``describe_images``), its embedding thumbnail handed to ``batches``."""

    def consume(index: int, info: dict) -> None:
        thumb = info.pop("embed_thumb", None)
        if batches is not None and thumb is not None:
            batches.add(index, info["file_sha256"], thumb)

    described = describe_images(
        [it["image"] for it in items],
        read_image,
        workers,
        progress,
        embed_size=embedder.size if embedder is not None else None,
        consume=consume,
    )
    if batches is not None:
        batches.flush()
    return described


def _tally(items: list[dict], described: list[dict], labels: list[str], splits: list[str]) -> dict:
    """Class balance per split, image properties, the unreadable items and the indices of the readable."""
    balance = {s: Counter() for s in splits}
    for item in items:
        balance[item["_split"]].update(label_names_of(item, labels))
    keys = ("format", "modality", "manufacturer", "photometric", "content", "bit_depth", "size", "channels")
    stats = {key: Counter() for key in keys}
    unreadable, ok = [], []
    for index, (item, info) in enumerate(zip(items, described, strict=True)):
        if "error" in info:
            unreadable.append({"image": item["image"], "split": item["_split"], "error": info["error"]})
            continue
        ok.append(index)
        for key in stats:
            if key != "manufacturer" or info.get("format") == "DICOM":
                stats[key][str(info.get(key))] += 1
    return {"balance": balance, "stats": stats, "unreadable": unreadable, "ok": ok}


def _patients(items: list[dict]) -> dict:
    """``shared``: the patients in more than one split (with their count per split); ``items``: each
    patient's item indices."""
    patient_splits: dict[str, Counter] = defaultdict(Counter)
    patient_items: dict[str, list[int]] = defaultdict(list)
    for i, item in enumerate(items):
        pid = item.get("patient_id")
        if pid not in (None, ""):
            patient_splits[str(pid)][item["_split"]] += 1
            patient_items[str(pid)].append(i)
    shared = [
        {"patient_id": pid, "splits": dict(counts)}
        for pid, counts in sorted(patient_splits.items())
        if len(counts) > 1
    ]
    return {"shared": shared, "items": patient_items}


def _leakage(items, labels, splits, exact: list[tuple], near: list[dict], shared_patients: list[dict]):
    """The leakage section of the report, the duplicate counts within each split and those pairs."""

    def ref(i: int) -> dict:
        return {
            "image": items[i]["image"],
            "split": items[i]["_split"],
            "label": label_names_of(items[i], labels),
        }

    by_pair: dict[str, Counter] = defaultdict(Counter)
    within: dict[str, Counter] = defaultdict(Counter)
    cross = {"exact_duplicate_pairs": [], "near_duplicate_pairs": []}
    within_pairs = []
    records = [(a, b, "exact_duplicate_pairs", {"kind": kind}) for a, b, kind in exact]
    records += [
        (
            p["a"],
            p["b"],
            "near_duplicate_pairs",
            {"kind": "near", **{k: v for k, v in p.items() if k not in ("a", "b")}},
        )
        for p in near
    ]
    for a, b, counter, extra in records:
        record = {"a": ref(a), "b": ref(b), **extra}
        sa, sb = items[a]["_split"], items[b]["_split"]
        if sa == sb:
            within[sa][counter] += 1
            within_pairs.append(record)
        else:
            by_pair[split_pair(sa, sb, splits)][counter] += 1
            cross[counter].append(record)
    for entry in shared_patients:
        names = sorted(entry["splits"], key=lambda s: splits.index(s) if s in splits else len(splits))
        for x in range(len(names)):
            for y in range(x + 1, len(names)):
                by_pair[split_pair(names[x], names[y], splits)]["shared_patients"] += 1
    # images in the test split with a copy elsewhere: the count that inflates test accuracy
    leaked_images: dict[str, set] = defaultdict(set)
    for pair in cross["exact_duplicate_pairs"] + cross["near_duplicate_pairs"]:
        for side in ("a", "b"):
            leaked_images[pair[side]["split"]].add(pair[side]["image"])
    leakage = {
        "found": bool(shared_patients or cross["exact_duplicate_pairs"] or cross["near_duplicate_pairs"]),
        "shared_patients": shared_patients,
        "exact_duplicates": cross["exact_duplicate_pairs"],
        "near_duplicates": cross["near_duplicate_pairs"],
        "counts_by_split_pair": {k: dict(v) for k, v in sorted(by_pair.items())},
        "images_with_a_copy_in_another_split": {s: len(v) for s, v in leaked_images.items()},
    }
    return leakage, within, within_pairs


def _groups(n: int, links: list[tuple[int, int]], patient_items: dict[str, list[int]]) -> list[int]:
    """Each item's cluster: items linked as duplicates, or of one patient, share one."""
    uf = UnionFind(n)
    for a, b in links:
        uf.union(a, b)
    for members in patient_items.values():
        for other in members[1:]:
            uf.union(members[0], other)
    return [uf.find(i) for i in range(n)]


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
    embedder: Embedder | None = None,
    neighbours: int = DEFAULT_NEIGHBOURS,
    min_similarity: float = DEFAULT_MIN_SIMILARITY,
    min_inliers: int = DEFAULT_MIN_INLIERS,
    embedding_cache: str | os.PathLike | None | bool = None,
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
        doc,
        read_image,
        threshold=threshold,
        transforms=transforms,
        confirm=confirm,
        confirm_pixels=confirm_pixels,
        workers=workers,
        progress=progress,
        embedder=embedder,
        neighbours=neighbours,
        min_similarity=min_similarity,
        min_inliers=min_inliers,
        embedding_cache=embedding_cache,
    )
    for entry in report["unreadable"]:  # reasons name the file, not its full path (that is its own field)
        entry["error"] = without_path(entry["error"], entry["image"])
    if source.is_dir():  # every file of the folder that was not audited, with its reason
        report["unreadable"] += not_audited(
            source,
            [it["image"] for sp in split_keys(doc) for it in doc[sp] if isinstance(it.get("image"), str)],
        )
    if write_regrouped:
        splits = regroup(doc, report, seed)
        meta = {k: v for k, v in doc.items() if k in ("name", "description")}
        path = save_datalist(
            out_dir / "datalist_regrouped.json",
            splits,
            doc["labels"],
            multi_label=bool(doc.get("multi_label")),
            regrouped_from=str(datalist_path),
            group_key="audit_group",
            seed=seed,
            **meta,
        )
        report["regrouped_datalist"] = str(path)
        report["regrouped_splits"] = {k: len(v) for k, v in splits.items()}
        report["regrouped_moved"] = sum(
            1 for v in splits.values() for item in v if "audit_moved_from" in item
        )
    report["outputs"] = {k: str(v) for k, v in write_audit(report, out_dir).items()}
    return report
