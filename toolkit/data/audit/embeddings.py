"""The embedding stage of the near-duplicate search: features cached by file content, candidate
pairs from a nearest-neighbour index, each confirmed on the pixels (``registration``).

The hash stage finds exact copies and copies turned by multiples of 90 degrees or mirrored; it
misses copies rotated by a few degrees, zoomed or cropped (LC25000). Here every image gets an
embedding from the caller's ``Embedder`` (``toolkit.networks.embeddings.ImageEmbedder``: pooled
ImageNet EfficientNet-Lite0 features; it lives in a higher layer, so the audit takes the callable,
as it takes ``read_image``). Each image's ``k`` nearest neighbours by cosine similarity, at or above
``min_similarity``, are candidates; a candidate is confirmed when ``registration.verify`` finds at
least ``min_inliers`` keypoints of the two grey thumbnails that one similarity transform (rotation,
zoom, shift, maybe a mirror) maps onto each other.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
from sklearn.neighbors import NearestNeighbors

from toolkit.data.audit.registration import DEFAULT_MIN_INLIERS
from toolkit.io import atomic_write_bytes

# Thresholds chosen on LC25000 (source_tiles.csv gives the truth) and checked on brain MRI, Kermany
# and ChestX-ray14 (docs/data-audit.md, tests/data/test_embedding_stage_real.py).
DEFAULT_NEIGHBOURS = 15
DEFAULT_MIN_SIMILARITY = 0.55


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


def candidate_pairs(
    features: np.ndarray, k: int = DEFAULT_NEIGHBOURS, min_similarity: float = DEFAULT_MIN_SIMILARITY
) -> list[tuple[int, int, float]]:
    """Pairs ``(i < j, cosine similarity)`` where j is among i's ``k`` nearest neighbours (or i among
    j's) with similarity >= ``min_similarity``. scikit-learn's ``NearestNeighbors`` (brute force in
    memory-bounded chunks: exact, O(N^2 D) time, O(N k) memory) on the L2-normalised features."""
    x = np.asarray(features, dtype=np.float32)
    n = len(x)
    if n < 2:
        return []
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    index = NearestNeighbors(n_neighbors=min(k + 1, n), metric="euclidean", algorithm="brute").fit(x)
    distances, neighbours = index.kneighbors(x)
    pairs: dict[tuple[int, int], float] = {}
    for i in range(n):
        for d, j in zip(distances[i].tolist(), neighbours[i].tolist(), strict=True):
            similarity = 1.0 - d * d / 2.0  # unit vectors: |a - b|^2 = 2 - 2 cos
            if j != i and similarity >= min_similarity:
                pairs[(min(i, j), max(i, j))] = round(similarity, 4)
    return [(i, j, s) for (i, j), s in sorted(pairs.items())]


ProgressFn = Callable[[int, int], None]


def confirm_candidates(
    candidates: Sequence[tuple[int, int, float]],
    thumbs: Mapping[int, np.ndarray],
    min_inliers: int = DEFAULT_MIN_INLIERS,
    progress: ProgressFn | None = None,
) -> list[dict]:
    """Each candidate verified on its keypoints (``registration.verify``); the confirmed ones as
    ``{"i", "j", "similarity", "inliers", "flip", "angle", "scale", "matches"}``. Keypoints are
    computed once per image, only for images in a candidate pair."""
    from toolkit.data.audit.registration import image_keypoints, verify  # noqa: PLC0415

    points: dict[int, tuple] = {}

    def of(i: int) -> tuple:
        if i not in points:
            points[i] = image_keypoints(thumbs[i])
        return points[i]

    confirmed = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # RANSAC's "No inliers found": a pair that does not match
        for n, (i, j, similarity) in enumerate(candidates):
            match = verify(of(i), of(j), min_inliers)
            if match["inliers"] >= min_inliers:
                confirmed.append({"i": i, "j": j, "similarity": similarity, **match})
            if progress and (n + 1) % 500 == 0:
                progress(n + 1, len(candidates))
    return confirmed
