"""Near-duplicate pairs of pHashes: a range search in Hamming space with faiss' multi-index hashing."""

from __future__ import annotations

import math

import numpy as np

from toolkit.data.audit.images import DEFAULT_HAMMING

BITS = 64  # a pHash


def near_duplicate_pairs(
    hashes: np.ndarray, threshold: int = DEFAULT_HAMMING, transforms: bool = True
) -> list[tuple[int, int, int, int]]:
    """All pairs (i < j) whose pHashes differ in at most ``threshold`` bits.

    ``hashes`` is (N, 8) uint64: each image's pHash under ``TRANSFORMS``. With ``transforms``
    image i is compared against all 8 variants of image j, else only the identity. Returns
    ``(i, j, distance, transform index)`` tuples, sorted by i then j; the transform is the first
    of those at the smallest distance.

    The search is exact: every variant goes into a faiss multi-index hash (:func:`hamming_index`),
    and each image's own hash is searched in it with the radius ``threshold``. Its cost grows about
    as N (plus N^2 / 2^b candidate checks, b = 16-21 bits per table) instead of the N^2 of
    comparing every pair: 100,000 images in seconds (``scripts/bench_audit.py``).
    """
    hashes = np.ascontiguousarray(hashes, dtype=np.uint64)
    n = len(hashes)
    if n < 2:
        return []
    variants = np.ascontiguousarray(hashes if transforms else hashes[:, :1])
    per_image = variants.shape[1]
    index = hamming_index(threshold, variants.size)
    index.add(variants.reshape(-1).view(np.uint8).reshape(-1, BITS // 8))
    queries = np.ascontiguousarray(hashes[:, 0]).view(np.uint8).reshape(-1, BITS // 8)
    limits, distances, ids = index.range_search(queries, threshold + 1)  # faiss: distance < radius
    i = np.repeat(np.arange(n), np.diff(limits.astype(np.int64)))
    j, t = np.divmod(ids, per_image)
    keep = j > i
    i, j, t, d = i[keep], j[keep], t[keep], distances[keep]
    order = np.lexsort((t, d, j, i))  # by image i, then j, then distance, then transform
    i, j, t, d = i[order], j[order], t[order], d[order]
    first = np.ones(len(i), dtype=bool)
    first[1:] = (i[1:] != i[:-1]) | (j[1:] != j[:-1])
    return list(zip(i[first].tolist(), j[first].tolist(), d[first].tolist(), t[first].tolist(), strict=True))


def hamming_index(threshold: int, entries: int):
    """The cheapest exact faiss index for a Hamming range search of radius ``threshold`` over
    ``entries`` 64-bit codes.

    Multi-index hashing (``IndexBinaryMultiHash``): the code is cut into ``m`` tables of ``b`` bits;
    two codes within ``threshold`` bits agree on some table up to ``threshold // m`` bits (the
    pigeonhole), so probing each table's bucket and those ``nflip <= threshold // m`` bits away
    finds every match. The estimated cost per query is the probes plus the codes in the probed
    buckets (about 3x dearer each, as measured); a brute-force scan (``IndexBinaryFlat``) is taken
    when that is cheaper, e.g. for a large ``threshold``.
    """
    import faiss

    best, best_cost = None, float(entries)  # brute force: every code once per query
    for tables in range(2, 9):
        bits = BITS // tables
        flips = threshold // tables
        probes = tables * sum(math.comb(bits, k) for k in range(flips + 1))
        cost = probes + 3 * probes * entries / 2**bits
        if cost < best_cost:
            best, best_cost = (tables, bits, flips), cost
    if best is None:
        return faiss.IndexBinaryFlat(BITS)
    tables, bits, flips = best
    index = faiss.IndexBinaryMultiHash(BITS, tables, bits)
    index.nflip = flips
    return index
