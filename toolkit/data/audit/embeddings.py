"""The embedding stage of the near-duplicate search: features cached by file content, candidate
pairs from a nearest-neighbour index, each confirmed on the pixels (``registration``).

The hash stage finds exact copies and copies turned by multiples of 90 degrees or mirrored; it
misses copies rotated by a few degrees, zoomed or cropped (LC25000). Here every image gets an
embedding from the caller's ``Embedder`` (``toolkit.networks.embeddings.ImageEmbedder``: pooled
ImageNet EfficientNet-Lite0 features; it lives in a higher layer, so the audit takes the callable,
as it takes ``read_image``). Each image's ``k`` nearest neighbours by cosine similarity (faiss: exact
up to ``EXACT_MAX`` images, a graph index above), at or above ``min_similarity``, are candidates; a
candidate is confirmed when ``registration.verify`` finds at least ``min_inliers`` keypoints of the
two grey thumbnails that one similarity transform (rotation, zoom, shift, maybe a mirror) maps onto
each other.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from toolkit.data.audit.registration import DEFAULT_MIN_INLIERS
from toolkit.io import atomic_write_bytes

# Thresholds chosen on LC25000 (source_tiles.csv gives the truth) and checked on brain MRI, Kermany
# and ChestX-ray14 (docs/data-audit.md; scripts/near_duplicate_truth.py, scripts/embedding_pair_check.py).
DEFAULT_NEIGHBOURS = 15
DEFAULT_MIN_SIMILARITY = 0.55

# The nearest-neighbour search (faiss): exact up to EXACT_MAX vectors, a graph index (HNSW) above.
# Measured on 25,000 random 1280-d vectors (a shared 2-core machine): exact 79 s, HNSW 327 s. Exact is
# faster there, but grows as N^2 (about 16x that at 100,000); random vectors are the graph's worst case.
EXACT_MAX = 20_000
HNSW_LINKS = 32  # graph neighbours per vector (faiss's M)
HNSW_BUILD_DEPTH = 200  # candidate list while building (efConstruction): fewer neighbours missed
HNSW_SEARCH_DEPTH = 128  # candidate list while searching (efSearch)
QUERY_BLOCK = 10_000  # queries per search call (memory) and per progress report

ProgressFn = Callable[[int, int], None]
PROGRESS_EVERY = 500  # candidates per progress report (and per task of a worker process)


class Embedder(Protocol):
    """Maps RGB thumbnails ``(B, size, size, 3)`` uint8 to ``(B, D)`` L2-normalised float32 features."""

    name: str  # cache key: another network or resolution gets other features
    size: int

    def __call__(self, batch: np.ndarray) -> np.ndarray: ...


def default_cache_dir() -> Path:
    """``$CIT_EMBEDDING_CACHE``, else ``~/.cache/cit/embeddings``."""
    return Path(os.environ.get("CIT_EMBEDDING_CACHE") or Path.home() / ".cache" / "cit" / "embeddings")


class EmbeddingCache:
    """Features on disk, one ``.npy`` per (embedder, file SHA-256), written atomically: a re-run, or
    a run after an interrupted one, embeds only the files it has not seen."""

    def __init__(self, folder: str | os.PathLike, embedder_name: str):
        self.folder = Path(folder) / "".join(c if c.isalnum() or c in "-_." else "_" for c in embedder_name)

    def _path(self, sha: str) -> Path:
        return self.folder / sha[:2] / f"{sha}.npy"

    def get(self, sha: str) -> np.ndarray | None:
        try:
            return np.load(self._path(sha), allow_pickle=False)
        except (OSError, ValueError):  # absent, or a torn file from another writer: embed again
            return None

    def put(self, sha: str, feature: np.ndarray) -> None:
        buffer = io.BytesIO()
        np.save(buffer, np.asarray(feature, dtype=np.float32), allow_pickle=False)
        atomic_write_bytes(self._path(sha), buffer.getvalue())


class BatchEmbedding:
    """Collects ``(index, sha, thumbnail)`` and embeds them in batches (cache first); ``features``
    maps index -> feature. Keeps at most ``batch`` thumbnails in memory."""

    def __init__(self, embedder: Embedder, cache: EmbeddingCache | None, batch: int = 32):
        self.embedder, self.cache, self.batch = embedder, cache, batch
        self.features: dict[int, np.ndarray] = {}
        self.embedded = 0  # computed, not read from the cache
        self._pending: list[tuple[int, str, np.ndarray]] = []

    def add(self, index: int, sha: str, thumb: np.ndarray) -> None:
        cached = self.cache.get(sha) if self.cache else None
        if cached is not None:
            self.features[index] = cached
            return
        self._pending.append((index, sha, thumb))
        if len(self._pending) >= self.batch:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        features = self.embedder(np.stack([t for _, _, t in self._pending]))
        for (index, sha, _), feature in zip(self._pending, features, strict=True):
            self.features[index] = feature
            if self.cache:
                self.cache.put(sha, feature)
        self.embedded += len(self._pending)
        self._pending = []


def embedding_thumb(arr: np.ndarray, size: int) -> np.ndarray | None:
    """RGB ``size`` px uint8 thumbnail of a decoded 2D image (grey repeated, min-max scaled when not
    8-bit), as the embedder sees it; None for a volume."""
    from PIL import Image

    x = np.asarray(arr)
    if x.ndim == 3 and x.shape[-1] not in (1, 3, 4):
        return None
    if x.ndim == 3:
        x = x[..., :3] if x.shape[-1] >= 3 else x[..., 0]
    if x.dtype != np.uint8:
        x = x.astype(np.float64)
        lo, hi = float(x.min()), float(x.max())
        x = np.zeros(x.shape, np.uint8) if hi <= lo else ((x - lo) * (255.0 / (hi - lo))).astype(np.uint8)
    image = Image.fromarray(np.ascontiguousarray(x)).convert("RGB")
    return np.asarray(image.resize((size, size), Image.Resampling.BILINEAR))


def neighbour_index(x: np.ndarray):
    """A faiss inner-product index over unit vectors ``x`` (cosine similarity): exact (``IndexFlatIP``,
    O(N^2 D) in all) up to ``EXACT_MAX`` vectors, else a graph index (HNSW: ``IndexHNSWFlat``,
    build and queries O(N log N) in all, approximate: a true neighbour may be missed, rarely)."""
    import faiss  # noqa: PLC0415  (imported with the embedding stage only)

    if len(x) <= EXACT_MAX:
        index = faiss.IndexFlatIP(x.shape[1])
    else:
        index = faiss.IndexHNSWFlat(x.shape[1], HNSW_LINKS, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW_BUILD_DEPTH
    index.add(x)
    return index


def candidate_pairs(
    features: np.ndarray,
    k: int = DEFAULT_NEIGHBOURS,
    min_similarity: float = DEFAULT_MIN_SIMILARITY,
    progress: ProgressFn | None = None,
) -> list[tuple[int, int, float]]:
    """Pairs ``(i < j, cosine similarity)`` where j is among i's ``k`` nearest neighbours (or i among
    j's) with similarity >= ``min_similarity``, from ``neighbour_index`` over the L2-normalised
    features, queried in blocks of ``QUERY_BLOCK`` (memory O(N k)); ``progress(done, total)`` after
    each block when there are several."""
    x = np.asarray(features, dtype=np.float32)
    n = len(x)
    if n < 2:
        return []
    x = np.ascontiguousarray(x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12))
    index = neighbour_index(x)
    depth = min(k + 1, n)
    if hasattr(index, "hnsw"):
        index.hnsw.efSearch = max(HNSW_SEARCH_DEPTH, 2 * depth)
    pairs: dict[tuple[int, int], float] = {}
    for start in range(0, n, QUERY_BLOCK):
        similarities, neighbours = index.search(x[start : start + QUERY_BLOCK], depth)
        for row, (sims, ids) in enumerate(zip(similarities.tolist(), neighbours.tolist(), strict=True)):
            i = start + row
            for similarity, j in zip(sims, ids, strict=True):
                if j >= 0 and j != i and similarity >= min_similarity:
                    pairs[(min(i, j), max(i, j))] = round(similarity, 4)
        if progress and n > QUERY_BLOCK:
            progress(min(start + QUERY_BLOCK, n), n)
    return [(i, j, s) for (i, j), s in sorted(pairs.items())]


# Worker processes inherit the keypoints by fork (copy-on-write) instead of receiving them per task.
_SHARED_POINTS: dict[int, tuple] = {}


def _verify_chunk(chunk: Sequence[tuple[int, int, float]], min_inliers: int) -> list[dict]:
    from toolkit.data.audit.registration import verify  # noqa: PLC0415

    return [
        {"i": i, "j": j, "similarity": s, **verify(_SHARED_POINTS[i], _SHARED_POINTS[j], min_inliers)}
        for i, j, s in chunk
    ]


def verify_candidates(
    candidates: Sequence[tuple[int, int, float]],
    thumbs: Mapping[int, np.ndarray],
    min_inliers: int = DEFAULT_MIN_INLIERS,
    progress: ProgressFn | None = None,
    workers: int = 1,
) -> list[dict]:
    """Every candidate verified on its keypoints (``registration.verify``), in order, as ``{"i", "j",
    "similarity", "inliers", "flip", "angle", "scale", "matches"}``. Keypoints are computed once per
    image, only for images in a candidate pair; with ``workers`` > 1, keypoints and verification run
    in that many processes (fork start method, where the platform has it; else in this process).
    ``progress(done, total)`` is called every ``PROGRESS_EVERY`` candidates."""
    import multiprocessing  # noqa: PLC0415
    from concurrent.futures import ProcessPoolExecutor  # noqa: PLC0415

    from toolkit.data.audit.registration import image_keypoints  # noqa: PLC0415

    needed = sorted({i for i, j, _ in candidates} | {j for i, j, _ in candidates})
    fork = workers > 1 and "fork" in multiprocessing.get_all_start_methods()
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) if fork else None
    try:
        mapper = pool.map if pool else map
        kwargs = {"chunksize": 16} if pool else {}
        _SHARED_POINTS.clear()
        _SHARED_POINTS.update(
            zip(needed, mapper(image_keypoints, (thumbs[i] for i in needed), **kwargs), strict=True)
        )
        if pool:  # the keypoint workers were forked before _SHARED_POINTS was filled: fresh ones
            pool.shutdown()
            pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))
        chunks = [candidates[n : n + PROGRESS_EVERY] for n in range(0, len(candidates), PROGRESS_EVERY)]
        results: list[dict] = []
        chunk_results = (
            pool.map(_verify_chunk, chunks, [min_inliers] * len(chunks))
            if pool
            else (_verify_chunk(c, min_inliers) for c in chunks)
        )
        for verified in chunk_results:
            results += verified
            if progress:
                progress(len(results), len(candidates))
        return results
    finally:
        _SHARED_POINTS.clear()
        if pool:
            pool.shutdown()
