"""Near-duplicate pairs of pHashes (numpy popcounts in blocks)."""

from __future__ import annotations

import numpy as np

from toolkit.data.audit.images import DEFAULT_HAMMING


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
