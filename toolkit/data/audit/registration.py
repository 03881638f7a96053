"""Pixel-level confirmation of a near-duplicate candidate under rotation, zoom, crop, shift and flip.

Augmented copies (LC25000: rotated up to 25 degrees either way and cropped back to a square, so
also zoomed, some zoomed or cropped further; flipped; re-encoded) defeat hashes. Two copies of one
tile are related by a similarity transform (rotation, scale, shift; one of them maybe mirrored) on
a partly shared field of view. The confirmation finds that transform from the pixels: SIFT
keypoints (Lowe 2004, OpenCV: scale-space extrema with gradient-histogram descriptors, rotation- and
scale-invariant) of both grey thumbnails, matched both ways with Lowe's ratio test, and RANSAC
fitting a similarity transform to the matches (OpenCV's ``estimateAffinePartial2D``). A pair is
confirmed when at least ``min_inliers`` matched keypoints, at distinct places, agree with one
transform within ``RESIDUAL`` px.

SIFT replaced ORB (scikit-image's) here: on LC25000 the copies ORB missed shared too few ORB
matches; SIFT confirms more of them, and the whole audit took 85 s instead of 309 s
(docs/data-audit.md gives both, measured by ``scripts/near_duplicate_truth.py``). A global alignment
(Fourier-Mellin phase correlation, tried first) failed on a third of the copies, those cropped
off-centre with a large zoom, where the two pictures share only part of their field of view;
keypoints need only the shared part.
"""

from __future__ import annotations

import numpy as np

REG_SIZE = 224  # grey thumbnail side for the keypoints (LC25000's own size; larger images are reduced)
KEYPOINTS = 500  # the strongest SIFT keypoints kept per thumbnail
RESIDUAL = 2.0  # px at REG_SIZE
CELL = 4.0  # px: inliers closer than this on image a count once
RANSAC_TRIALS = 2000  # at most; OpenCV stops earlier once a transform fits with 99 % confidence
MAX_RATIO = 0.8  # Lowe's ratio test (Lowe 2004's value): a match must be clearly better than the second best
DEFAULT_MIN_INLIERS = 9  # the best F1 on LC25000's lung_aca images (docs/data-audit.md)


def keypoints(thumb: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """SIFT keypoints (x, y; float32) and descriptors (128 bytes a keypoint, OpenCV's uint8 form:
    small enough to pass between processes) of a grey uint8 thumbnail; None when it has fewer than
    4 (a flat image)."""
    import cv2  # OpenCV: imported when the embedding stage runs

    sift = cv2.SIFT_create(KEYPOINTS, 3, 0.04, 10, 1.6, cv2.CV_8U)  # OpenCV's defaults, uint8 descriptors
    found, descriptors = sift.detectAndCompute(np.ascontiguousarray(thumb, dtype=np.uint8), None)
    if descriptors is None or len(found) < 4:
        return None
    return np.array([k.pt for k in found], np.float32), descriptors


def image_keypoints(thumb: np.ndarray) -> tuple:
    """Keypoints of the thumbnail and of its mirror image (a flipped copy matches the second)."""
    return keypoints(thumb), keypoints(np.ascontiguousarray(np.asarray(thumb)[:, ::-1]))


def match_descriptors(da: np.ndarray, db: np.ndarray, max_ratio: float = MAX_RATIO) -> np.ndarray:
    """Mutual nearest neighbours of two sets of descriptors (Euclidean distance) passing Lowe's
    ratio test: ``(k, 2)`` index pairs. What scikit-image's ``match_descriptors(cross_check=True,
    max_ratio=...)`` returns, written here with one matrix product because its ``cdist`` took 30 ms
    for two sets of 500 keypoints, twice per candidate pair."""
    a, b = da.astype(np.float32), db.astype(np.float32)
    if len(a) < 2 or len(b) < 2:
        return np.empty((0, 2), np.intp)
    dist = np.sqrt(np.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T, 0))
    best_b = dist.argmin(axis=1)
    best_a = dist.argmin(axis=0)
    rows = np.arange(len(a))
    mutual = best_a[best_b] == rows
    two = np.partition(dist, 1, axis=1)[:, :2]
    ratio_ok = two[:, 0] < max_ratio * np.maximum(two[:, 1], 1e-9)
    keep = mutual & ratio_ok
    return np.stack([rows[keep], best_b[keep]], axis=1)


def verify(a: tuple, b: tuple, min_inliers: int = DEFAULT_MIN_INLIERS) -> dict:
    """Match image ``a``'s keypoints (``image_keypoints``) with ``b``'s, plain and mirrored; the
    best RANSAC similarity transform: ``{"inliers", "flip", "angle", "scale", "matches"}``.
    ``min_inliers`` only skips pairs with fewer matches than that; the caller applies the threshold."""
    import cv2

    best = {"inliers": 0, "flip": False, "angle": 0.0, "scale": 1.0, "matches": 0}
    base = a[0]
    if base is None:
        return best
    for flip, other in ((False, b[0]), (True, b[1])):
        if other is None:
            continue
        matches = match_descriptors(base[1], other[1])
        if len(matches) < max(3, min_inliers):
            continue
        src = other[0][matches[:, 1]]
        dst = base[0][matches[:, 0]]
        model, inliers = cv2.estimateAffinePartial2D(
            src,
            dst,
            method=cv2.RANSAC,
            ransacReprojThreshold=RESIDUAL,
            maxIters=RANSAC_TRIALS,
            confidence=0.99,
        )
        if model is None:  # no transform fits: no match
            continue
        # distinct places, not keypoints: one corner found at several scales matches several times,
        # and a smooth picture's few corners could otherwise make up the count alone
        count = len({(round(x / CELL), round(y / CELL)) for x, y in dst[inliers.ravel().astype(bool)]})
        if count > best["inliers"]:
            best = {
                "inliers": count,
                "flip": flip,
                "angle": round(float(np.degrees(np.arctan2(model[1, 0], model[0, 0]))) % 360, 1),
                "scale": round(float(np.hypot(model[0, 0], model[1, 0])), 3),
                "matches": len(matches),
            }
    return best
