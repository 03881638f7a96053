"""Which images of a datalist are copies of which, stage by stage, as index pairs into the described items.

- exact: the same decoded pixels (identical files are a subset);
- hash: 64-bit pHash within a Hamming threshold under flips and 90-degree turns, confirmed by the 256-bit
  pHash and the pixel difference of the thumbnails (``toolkit.data.audit.images``);
- embedding: among each image's nearest embeddings, confirmed when keypoints of the two thumbnails fit one
  similarity transform (``toolkit.data.audit.embeddings``): small rotations, zooms and crops.

Each stage leaves out the pairs an earlier stage found.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable

import numpy as np

from toolkit.data.audit.duplicates import near_duplicate_pairs
from toolkit.data.audit.embeddings import BatchEmbedding, candidate_pairs, verify_candidates
from toolkit.data.audit.images import TRANSFORMS, confirm_pair

logger = logging.getLogger(__package__)


def exact_pairs(described: list[dict], ok: list[int]) -> list[tuple[int, int, str]]:
    """``(a, b, kind)`` of the readable items ``ok`` that share their decoded pixels."""
    by_pixels: dict[str, list[int]] = defaultdict(list)
    for i in ok:
        by_pixels[described[i]["pixel_sha256"]].append(i)
    pairs = []
    for members in by_pixels.values():
        for a_pos, a in enumerate(members):
            for b in members[a_pos + 1 :]:
                same_file = described[a]["file_sha256"] == described[b]["file_sha256"]
                pairs.append((a, b, "identical file" if same_file else "identical pixels"))
    return pairs


def hash_pairs(
    described: list[dict],
    ok: list[int],
    found: set,
    threshold: int,
    transforms: bool,
    confirm,
    confirm_pixels,
) -> list[dict]:
    """Near-duplicates of the 2D items among ``ok`` by pHash, confirmed on the pixels (module docstring)."""
    hashed = [i for i in ok if described[i]["phash"] is not None]
    if not hashed:
        return []
    hashes = np.array([described[i]["phash"] for i in hashed], dtype=np.uint64)
    pairs = []
    for pa, pb, dist, t in near_duplicate_pairs(hashes, threshold, transforms):
        a, b = hashed[pa], hashed[pb]
        if (a, b) in found:
            continue
        fine, pixels, confirmed = confirm_pair(
            described[a]["thumb"], described[b]["thumb"], t, confirm, confirm_pixels
        )
        if confirmed:
            pairs.append(
                {
                    "a": a,
                    "b": b,
                    "stage": "hash",
                    "hamming": dist,
                    "transform": TRANSFORMS[t],
                    "hamming_256": fine,
                    "pixel_difference": pixels,
                }
            )
    return pairs


def embedding_pairs(
    described: list[dict],
    ok: list[int],
    batches: BatchEmbedding,
    found: set,
    settings: dict,
    workers: int,
    progress: Callable | None,
) -> tuple[list[dict], dict]:
    """Near-duplicates by embedding + keypoints, and the stage's counts. ``settings``: ``neighbours``,
    ``min_similarity``, ``min_inliers``."""
    embedded = [i for i in ok if i in batches.features and described[i].get("reg_thumb") is not None]
    candidates = []
    if len(embedded) > 1:
        searched = (
            (lambda d, t: logger.info("audit: nearest embeddings of %d / %d images", d, t))
            if progress
            else None
        )
        features = np.stack([batches.features[i] for i in embedded])
        for x, y, sim in candidate_pairs(
            features, settings["neighbours"], settings["min_similarity"], progress=searched
        ):
            if (embedded[x], embedded[y]) not in found:
                candidates.append((embedded[x], embedded[y], sim))
    if progress and candidates:
        logger.info(
            "audit: keypoints of the %d images in %d embedding candidate pairs",
            len({i for pair in candidates for i in pair[:2]}),
            len(candidates),
        )
    thumbs = {i: described[i]["reg_thumb"] for i in embedded}
    registered = (
        (lambda d, t: logger.info("audit: %d / %d candidates registered", d, t)) if progress else None
    )
    verified = verify_candidates(
        candidates, thumbs, settings["min_inliers"], progress=registered, workers=workers
    )
    pairs = []
    for match in verified:
        if match["inliers"] < settings["min_inliers"]:
            continue
        transform = ("flip+" if match["flip"] else "") + f"rot{match['angle']:g} scale{match['scale']:g}"
        pairs.append(
            {
                "a": match["i"],
                "b": match["j"],
                "stage": "embedding",
                "hamming": None,
                "transform": transform,
                "hamming_256": None,
                "pixel_difference": None,
                "embedding_similarity": match["similarity"],
                "keypoint_inliers": match["inliers"],
                "keypoint_matches": match["matches"],
            }
        )
    summary = {
        "embedded": len(embedded),
        "computed": batches.embedded,
        "from_cache": len(embedded) - batches.embedded,
        "candidates": len(candidates),
        "confirmed": len(pairs),
    }
    return pairs, summary
