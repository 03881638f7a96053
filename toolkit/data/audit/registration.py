"""Pixel-level confirmation of a near-duplicate candidate under rotation, zoom, crop, shift and flip.

Augmented copies (LC25000: rotated up to 25 degrees either way and cropped back to a square, so
also zoomed, some zoomed or cropped further; flipped; re-encoded) defeat hashes. Two copies of one
tile are related by a similarity transform (rotation, scale, shift; one of them maybe mirrored) on
a partly shared field of view. The confirmation finds that transform from the pixels: ORB keypoints
(FAST corners with rotated BRIEF descriptors, over an image pyramid, so rotation- and
scale-invariant; Rublee et al. 2011) of both grey thumbnails, matched both ways (cross-check), and
RANSAC fitting a ``SimilarityTransform`` to the matches (all scikit-image). A pair is confirmed when
at least ``min_inliers`` matched keypoints, at distinct places, agree with one transform within
``RESIDUAL`` px.

Measured on LC25000 (``docs/data-audit.md``): pairs of different tiles reach at most 5 inliers,
copies of one tile 3 to 450 (median > 100). A global alignment (Fourier-Mellin phase correlation,
tried first) failed on a third of the copies, those cropped off-centre with a large zoom, where
the two pictures share only part of their field of view; keypoints need only the shared part.
"""

from __future__ import annotations

import warnings

import numpy as np

REG_SIZE = 224  # grey thumbnail side for the keypoints (LC25000's own size; larger images are reduced)
KEYPOINTS = 500
FAST_THRESHOLD = 0.02  # low: histology and radiographs have soft corners
RESIDUAL = 2.0  # px at REG_SIZE
CELL = 4.0  # px: inliers closer than this on image a count once
RANSAC_TRIALS = 100
MAX_RATIO = 0.8  # Lowe's ratio test: a match must be clearly better than the second best
DEFAULT_MIN_INLIERS = 6


def keypoints(thumb: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """ORB keypoints (row, col; float32) and binary descriptors (bits packed 8 per byte, so 32 bytes a
    keypoint: small enough to pass between processes) of a grey thumbnail; None when it has too few
    corners (a flat image)."""
    from skimage.feature import ORB  # scikit-image: imported when the embedding stage runs

    orb = ORB(n_keypoints=KEYPOINTS, fast_threshold=FAST_THRESHOLD, downscale=1.2, n_scales=8)
    try:
        orb.detect_and_extract(np.asarray(thumb, dtype=np.float64) / 255.0)
    except RuntimeError:  # "ORB found no features"
        return None
    if len(orb.keypoints) < 4:
        return None
    return np.asarray(orb.keypoints, np.float32), np.packbits(np.asarray(orb.descriptors, bool), axis=1)


def image_keypoints(thumb: np.ndarray) -> tuple:
    """Keypoints of the thumbnail and of its mirror image (a flipped copy matches the second)."""
    return keypoints(thumb), keypoints(np.ascontiguousarray(np.asarray(thumb)[:, ::-1]))


def match_binary(pa: np.ndarray, pb: np.ndarray, max_ratio: float = MAX_RATIO) -> np.ndarray:
    """Mutual nearest neighbours of two sets of packed binary descriptors (Hamming distance) passing
    Lowe's ratio test: ``(k, 2)`` index pairs. What ``skimage.feature.match_descriptors(cross_check=True,
    max_ratio=...)`` returns, written here on packed bits with numpy's popcount because scipy's
    Hamming ``cdist`` on booleans, which it uses, took 60 ms a pair, most of the audit's time."""
    dist = np.bitwise_count(pa[:, None, :] ^ pb[None, :, :]).sum(axis=2, dtype=np.int32)
    if dist.shape[1] < 2 or dist.shape[0] < 2:
        return np.empty((0, 2), np.intp)
    best_b = dist.argmin(axis=1)
    best_a = dist.argmin(axis=0)
    rows = np.arange(len(pa))
    mutual = best_a[best_b] == rows
    two = np.partition(dist, 1, axis=1)[:, :2].astype(np.float64)
    ratio_ok = two[:, 0] < max_ratio * np.maximum(two[:, 1], 1e-9)
    keep = mutual & ratio_ok
    return np.stack([rows[keep], best_b[keep]], axis=1)


def verify(a: tuple, b: tuple, min_inliers: int = DEFAULT_MIN_INLIERS) -> dict:
    """Match image ``a``'s keypoints (``image_keypoints``) with ``b``'s, plain and mirrored; the
    best RANSAC similarity transform: ``{"inliers", "flip", "angle", "scale", "matches"}``."""
    from skimage.measure import ransac
    from skimage.transform import SimilarityTransform

    best = {"inliers": 0, "flip": False, "angle": 0.0, "scale": 1.0, "matches": 0}
    base = a[0]
    if base is None:
        return best
    for flip, other in ((False, b[0]), (True, b[1])):
        if other is None:
            continue
        matches = match_binary(base[1], other[1])
        if len(matches) < max(3, min_inliers):
            continue
        src = other[0][matches[:, 1]][:, ::-1]  # (x, y)
        dst = base[0][matches[:, 0]][:, ::-1]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "No inliers found": a pair that does not match
                model, inliers = ransac(
                    (src, dst),
                    SimilarityTransform,
                    min_samples=3,
                    residual_threshold=RESIDUAL,
                    max_trials=RANSAC_TRIALS,
                    stop_sample_num=4 * min_inliers,
                    rng=0,
                )
        except RuntimeError:  # scikit-image >= 0.26: "Failed estimation" when no sample fits: no match
            continue
        if inliers is None or not model:  # a failed estimation is falsy (scikit-image >= 0.26)
            continue
        # distinct places, not keypoints: one corner found at several pyramid levels matches several
        # times, and a smooth picture's few corners could otherwise make up the count alone
        count = len({(round(x / CELL), round(y / CELL)) for x, y in dst[inliers]})
        if count > best["inliers"]:
            best = {
                "inliers": count,
                "flip": flip,
                "angle": round(float(np.degrees(model.rotation)) % 360, 1),
                "scale": round(float(model.scale), 3),
                "matches": len(matches),
            }
    return best
