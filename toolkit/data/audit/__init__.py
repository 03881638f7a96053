"""Data-set audit: class balance, image properties, unreadable files and train/test leakage.

Published results of 99-100% accuracy often come from splits that put one patient, or augmented
copies of one image, in both training and test. The audit looks for exactly that:

* the same ``patient_id`` in two splits;
* exact duplicates: identical file bytes, or identical decoded pixels (a re-encoded copy, or
  DICOM files differing only in their header);
* near-duplicates: perceptual hashes (``imagehash.phash``, 64 bits) within a Hamming distance,
  by default also against the 8 rotations / flips of the other image, as augmented copies are
  often rotated or mirrored; each candidate is confirmed with a finer 256-bit pHash and on the
  pixels (contrast-normalised thumbnail difference under the matched rotation / flip);
* with an embedder (``cit audit --embeddings``), near-duplicates under small rotations, zooms and
  crops: nearest ImageNet embeddings, confirmed by SIFT keypoints that fit one similarity transform
  (``embeddings``, ``registration``).

It also looks for confounds: image properties (colour mode, channels as stored, bit depth, size,
format, DICOM modality / manufacturer) that predict the label, a shortcut a network learns
instead of the disease (``confounds``).

Every image is decoded once by the caller's ``read_image`` (``cit audit`` passes the toolkit's
readers, so DICOM / NIfTI / PNG / JPEG all work): the readers live in ``toolkit.transforms``, a
layer above this one, so the audit takes the function instead of importing them. A file that
cannot be read is reported and skipped. Hash pairs are compared with numpy popcounts in blocks,
which handles ~6,000 images in seconds. ``regroup`` offers the fix: the same split with each
patient and each cluster of duplicates moved into one split, every other image left where it was.

The package, one module per concept (lower modules never import this one):

* ``images``: one image described (header facts, hashes, thumbnail), the near-duplicate thresholds
  and the 256-bit pHash / pixel confirmation of a candidate pair;
* ``duplicates``: candidate pairs of 64-bit pHashes;
* ``embeddings``: the embedding stage (feature cache, nearest-neighbour candidates);
* ``registration``: keypoint confirmation of a candidate (SIFT + RANSAC, OpenCV);
* ``items``: datalist items as the audit sees them (flattened with their split, class names);
* ``confounding``: image properties that predict the label;
* ``report``: audit.md and writing audit.json + audit.md;
* ``unaudited``: files of a source folder that were not audited, with the reason;
* ``core``: ``audit_datalist``, ``regroup`` and ``run_audit``;
* ``grouping``: the audit's clusters as the groups of a split (``near_duplicate_grouper``).
"""

from __future__ import annotations

from toolkit.data.audit.confounding import (
    CONFOUND_P,
    CONFOUND_V,
    PROPERTIES,
    SHORTCUT_MIN,
    SHORTCUT_P,
    SHORTCUT_SHARE,
    SIZE_EXACT_MAX,
    confounds,
    cramers_v,
    size_buckets,
)
from toolkit.data.audit.core import audit_datalist, regroup, run_audit
from toolkit.data.audit.duplicates import near_duplicate_pairs
from toolkit.data.audit.grouping import NEAR_DUPLICATE_OPTIONS, near_duplicate_grouper, near_duplicate_groups
from toolkit.data.audit.images import (
    DEFAULT_CONFIRM,
    DEFAULT_HAMMING,
    DEFAULT_PIXEL,
    PIXEL_SIZE,
    THUMB,
    TRANSFORMS,
    ReadImage,
    confirm_pair,
    describe_image,
    describe_images,
    phash256_distance,
    pixel_difference,
)
from toolkit.data.audit.report import audit_markdown, write_audit
from toolkit.data.audit.unaudited import not_audited

__all__ = [
    "CONFOUND_P",
    "CONFOUND_V",
    "DEFAULT_CONFIRM",
    "DEFAULT_HAMMING",
    "DEFAULT_PIXEL",
    "NEAR_DUPLICATE_OPTIONS",
    "PIXEL_SIZE",
    "PROPERTIES",
    "SHORTCUT_MIN",
    "SHORTCUT_P",
    "SHORTCUT_SHARE",
    "SIZE_EXACT_MAX",
    "THUMB",
    "TRANSFORMS",
    "ReadImage",
    "audit_datalist",
    "audit_markdown",
    "confirm_pair",
    "confounds",
    "cramers_v",
    "describe_image",
    "describe_images",
    "near_duplicate_grouper",
    "near_duplicate_groups",
    "near_duplicate_pairs",
    "not_audited",
    "phash256_distance",
    "pixel_difference",
    "regroup",
    "run_audit",
    "size_buckets",
    "write_audit",
]
