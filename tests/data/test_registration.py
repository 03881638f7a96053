"""The embedding stage's pieces on synthetic data: keypoint verification recovers a known rotation /
zoom / mirror and rejects another picture, the nearest-neighbour candidates, the feature cache."""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage

from toolkit.data.audit.embeddings import BatchEmbedding, EmbeddingCache, candidate_pairs
from toolkit.data.audit.registration import REG_SIZE, image_keypoints, match_descriptors, verify


def _texture(seed: int, n: int = 256) -> np.ndarray:
    """Blobs of several sizes: a stand-in for a histology tile."""
    rng = np.random.default_rng(seed)
    img = Image.fromarray((rng.random((n // 8, n // 8)) * 255).astype(np.uint8)).resize((n, n), Image.BICUBIC)
    fine = rng.random((n, n)) * 60
    return np.clip(np.asarray(img, dtype=np.float64) + fine, 0, 255)


def _thumb(x: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(x.astype(np.uint8)).resize((REG_SIZE, REG_SIZE)))


def _augmented(x: np.ndarray, angle: float, zoom: float) -> np.ndarray:
    """Rotated by ``angle`` degrees, centre crop zoomed by ``zoom``, mirrored (as LC25000 was made)."""
    turned = ndimage.rotate(x, angle, reshape=False, order=1, mode="reflect")
    n = x.shape[0]
    keep = int(n / zoom)
    start = (n - keep) // 2
    crop = turned[start : start + keep, start : start + keep]
    return np.asarray(Image.fromarray(crop.astype(np.uint8)).resize((n, n), Image.BILINEAR))[:, ::-1]


def test_keypoints_confirm_a_rotated_zoomed_mirrored_copy():
    a = _texture(0)
    copy = _augmented(a, 17.0, 1.3)
    match = verify(image_keypoints(_thumb(a)), image_keypoints(_thumb(copy)))
    assert match["flip"] is True
    assert match["inliers"] >= 20, match
    assert abs(match["scale"] - 1.3) < 0.1 or abs(match["scale"] - 1 / 1.3) < 0.1, match
    other = verify(image_keypoints(_thumb(a)), image_keypoints(_thumb(_texture(1))))
    assert other["inliers"] < 6, other


def test_descriptor_matches_are_mutual_nearest_passing_the_ratio_test():
    """Against the definition, pair by pair: j is i's nearest, i is j's nearest, and i's nearest is
    closer than 0.8 x its second nearest."""
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (40, 128)).astype(np.uint8)
    b = np.concatenate(
        [a[:15] + rng.integers(0, 3, (15, 128)).astype(np.uint8), rng.integers(0, 256, (30, 128))]
    )
    b = b.astype(np.uint8)
    dist = np.linalg.norm(a[:, None, :].astype(float) - b[None, :, :].astype(float), axis=2)
    expected = []
    for i in range(len(a)):
        j = int(dist[i].argmin())
        second = np.sort(dist[i])[1]
        if int(dist[:, j].argmin()) == i and dist[i, j] < 0.8 * second:
            expected.append((i, j))
    assert [tuple(m) for m in match_descriptors(a, b).tolist()] == expected
    assert expected[:15] == [(i, i) for i in range(15)]  # the near copies, and only they
    assert len(expected) == 15


def test_candidate_pairs_are_mutual_nearest_above_similarity():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 16))
    x[7] = x[3] + 0.01 * rng.normal(size=16)  # a near copy
    pairs = candidate_pairs(x, k=1, min_similarity=0.9)
    assert [(i, j) for i, j, _ in pairs] == [(3, 7)]
    assert pairs[0][2] > 0.99


def test_embedding_cache_resumes(tmp_path):
    calls = []

    def embed(batch):
        calls.append(len(batch))
        return np.ones((len(batch), 4), np.float32) * batch.mean(axis=(1, 2, 3))[:, None]

    embed.name, embed.size = "stub", 8
    cache = EmbeddingCache(tmp_path, embed.name)
    first = BatchEmbedding(embed, cache, batch=2)
    for i in range(3):
        first.add(i, f"{i:064x}", np.full((8, 8, 3), i, np.uint8))
    first.flush()
    assert calls == [2, 1] and first.embedded == 3
    again = BatchEmbedding(embed, cache, batch=2)
    for i in range(3):
        again.add(i, f"{i:064x}", np.full((8, 8, 3), i, np.uint8))
    again.flush()
    assert calls == [2, 1] and again.embedded == 0  # all from the cache
    assert np.allclose(again.features[2], first.features[2])
