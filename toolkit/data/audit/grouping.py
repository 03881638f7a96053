"""The audit's clusters as split groups: a split made with them keeps every patient and every cluster of
duplicate images in one part (``toolkit.data.build_datalist`` takes `near_duplicate_grouper` as its
``grouper``; the datalist builder does not import the audit, which reads datalists)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from functools import partial

from toolkit.data.audit.core import audit_datalist
from toolkit.data.splits import SPLIT_GROUP, UnionFind, is_multi_label

# near-duplicate settings a split may set (``toolkit.data.audit.audit_datalist`` arguments)
NEAR_DUPLICATE_OPTIONS = (
    "threshold",
    "transforms",
    "confirm",
    "confirm_pixels",
    "embeddings",
    "neighbours",
    "min_similarity",
    "min_inliers",
)


def _check(options) -> None:
    unknown = set(options) - set(NEAR_DUPLICATE_OPTIONS)
    if unknown:
        raise TypeError(
            f"unknown near-duplicate option(s) {sorted(unknown)}; known: {list(NEAR_DUPLICATE_OPTIONS)}"
        )


def near_duplicate_grouper(read_image, embedder=None, workers: int = 1, **options) -> Callable[..., dict]:
    """``grouper(items, labels) -> summary`` for ``build_datalist``: `near_duplicate_groups` with these
    settings, checked now rather than when the split is built."""
    _check(options)
    if read_image is None:
        raise ValueError("near-duplicate grouping needs read_image (a function decoding one image file)")
    return partial(
        near_duplicate_groups, read_image=read_image, workers=workers, embedder=embedder, **options
    )


def near_duplicate_groups(
    items: Sequence[dict], labels: Sequence[str], read_image, workers: int = 1, embedder=None, **options
) -> dict:
    """Cluster ``items`` by patient and by duplicate image, with the data-set audit's own rule.

    Every item gets ``SPLIT_GROUP`` (``"g<n>"``): items sharing a ``patient_id``, identical pixels
    or a confirmed near-duplicate (pHash + pixel check, also under rotations / flips; see
    ``toolkit.data.audit``) share it, so a split grouped by it keeps each cluster in one part.
    ``options``: ``NEAR_DUPLICATE_OPTIONS`` (the audit's thresholds; its defaults otherwise).
    ``read_image``: see ``toolkit.data.audit.ReadImage``; ``embedder`` (``toolkit.networks.embeddings.
    ImageEmbedder``, a higher layer, so the caller makes it) runs the audit's embedding stage too,
    when ``options["embeddings"]`` is True (off by default, as in ``cit audit``). Returns a summary for the log and the
    datalist: clusters of several images, the images in them, the largest, pairs found.
    """
    _check(options)
    multi = is_multi_label(items)
    if not options.pop("embeddings", False):
        embedder = None
    report = audit_datalist(
        {"labels": list(labels), "multi_label": multi, "all": list(items)},
        read_image,
        workers=workers,
        embedder=embedder,
        **options,
    )
    groups = report["_groups"]
    for item, group in zip(items, groups, strict=True):
        item[SPLIT_GROUP] = f"g{group}"
    # clusters made by duplicate images alone (patients aside): what the grouping adds
    index = {
        (it["image"][0] if isinstance(it["image"], list) else it["image"]): n for n, it in enumerate(items)
    }
    linked = UnionFind(len(items))
    for pair in report["within_split_pairs"]:
        linked.union(index[pair["a"]["image"]], index[pair["b"]["image"]])
    clusters = [n for n in Counter(linked.find(i) for i in range(len(items))).values() if n > 1]
    pairs = report["within_split"].get("all", {})
    return {
        "groups": len(set(groups)),
        "duplicate_clusters": len(clusters),
        "images_in_duplicate_clusters": sum(clusters),
        "largest_duplicate_cluster": max(clusters, default=0),
        "exact_duplicate_pairs": pairs.get("exact_duplicate_pairs", 0),
        "near_duplicate_pairs": pairs.get("near_duplicate_pairs", 0),
        "unreadable": len(report["unreadable"]),
        "settings": {
            k: report["settings"][v]
            for k, v in (
                ("threshold", "hamming_threshold"),
                ("transforms", "rotations_and_flips"),
                ("confirm", "confirm_hamming_256"),
                ("confirm_pixels", "confirm_pixel_difference"),
                ("embedding_stage", "embedding_stage"),
            )
        },
    }
