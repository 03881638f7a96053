"""The audit's embedding stage against ground truth (issue 22), on the real data in ../shared/data.

LC25000 was made by rotating (up to 25 degrees either way), cropping and flipping 250 tiles per
class; ``lc25000_lung_224/source_tiles.csv`` gives each image's tile (150 same-tile pairs among its
450 images). Issue 22's target: recall >= 0.90 at precision >= 0.95 on those 450 images, which the
first test holds at the audit's defaults (measured: 0.933 / 0.952, docs/data-audit.md, by
scripts/near_duplicate_truth.py). The keypoint threshold was chosen on the lung_aca third of the set.
"""

from __future__ import annotations

import csv
import itertools
from collections import defaultdict

import numpy as np
from PIL import Image

from toolkit.cli.audit import read_image
from toolkit.data.audit import audit_datalist
from toolkit.data.files import find_image_files
from toolkit.networks.embeddings import ImageEmbedder


def _named(report: dict) -> set[tuple[str, str]]:
    records = (
        report["within_split_pairs"]
        + report["leakage"]["exact_duplicates"]
        + report["leakage"]["near_duplicates"]
    )
    return {tuple(sorted((r["a"]["image"], r["b"]["image"]))) for r in records}


def test_lc25000_same_tile_pairs_are_named(shared_data):
    """All 450 images in one split: the pairs the audit names (exact, hash and embedding stage)
    against the same-tile pairs."""
    root = shared_data / "lc25000_lung_224"
    with open(root / "source_tiles.csv", newline="") as f:
        tiles = {str(root / row["file"]): row["source_tile"] for row in csv.DictReader(f)}
    members = defaultdict(list)
    for path, tile in tiles.items():
        members[tile].append(path)
    true = {tuple(sorted(p)) for group in members.values() for p in itertools.combinations(group, 2)}
    doc = {"labels": ["x"], "all": [{"image": p, "label": 0} for p in sorted(tiles)]}
    named = _named(audit_datalist(doc, read_image, embedder=ImageEmbedder(), embedding_cache=False))
    recall = len(named & true) / len(true)
    precision = len(named & true) / max(len(named), 1)
    assert len(true) == 150
    assert recall >= 0.90, (recall, precision)
    assert precision >= 0.95, (recall, precision, sorted(named - true))


def test_smooth_distinct_pictures_are_not_paired(tmp_path):
    """Smooth pictures (bicubic from a 6 x 6 grid), all different: their embeddings are close, so they
    become candidates, and the keypoints must reject them (keypoints on a regular lattice can match
    each other under some turn and zoom: ORB, used before SIFT, confirmed such pairs)."""
    rng = np.random.default_rng(0)
    files = []
    for k in range(60):
        path = tmp_path / f"{k}.png"
        Image.fromarray((rng.random((6, 6)) * 255).astype(np.uint8)).resize((64, 64), Image.BICUBIC).save(
            path
        )
        files.append(str(path))
    doc = {"labels": ["x"], "all": [{"image": p, "label": 0} for p in files]}
    report = audit_datalist(doc, read_image, embedder=ImageEmbedder(), embedding_cache=False)
    assert report["settings"]["embedding_stage"]["candidates"] > 100
    assert not _named(report)


def test_brain_mri_hash_pairs_are_kept(shared_data):
    """Every mirrored / turned copy the hash stage finds is still found with the embedding stage on
    (among the first 600 images, on the images of the first 20 hash pairs, to stay fast)."""
    root = shared_data / "brain_tumor_mri_224"
    files = [str(p) for p in find_image_files(root)][:600]
    doc = {"labels": ["x"], "all": [{"image": p, "label": 0} for p in files]}
    hash_only = audit_datalist(doc, read_image)
    pairs = sorted(_named(hash_only))[:20]
    assert pairs, "the subset holds hash pairs to check"
    subset = sorted({name for pair in pairs for name in pair})
    small = {"labels": ["x"], "all": [{"image": p, "label": 0} for p in subset]}
    both = audit_datalist(small, read_image, embedder=ImageEmbedder())
    assert set(pairs) <= _named(both)
