"""A split that keeps near-duplicate clusters together (a bundle's ``group_near_duplicates``, the
``grouper`` of ``build_datalist``), as LC25000 needs:
planted rotated / mirrored / re-windowed copies never span two splits, the grouping is reported,
and it is part of the bundle's split spec and fingerprint."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest
from PIL import Image

from toolkit.bundle.datalists import datalist_for, fingerprint, read_pixels, split_spec
from toolkit.data import build_datalist, load_datalist
from toolkit.data.audit import near_duplicate_grouper

CLASSES = ["lung_aca", "lung_n", "lung_scc"]
CLUSTERS_PER_CLASS, COPIES, SINGLES_PER_CLASS = 4, 3, 8  # each cluster: an original + 2 altered copies


def _pattern(rng, size=64) -> np.ndarray:
    """A smooth random RGB image: distinct patterns have unrelated perceptual hashes."""
    coarse = Image.fromarray((rng.random((6, 6, 3)) * 255).astype(np.uint8))
    return np.asarray(coarse.resize((size, size), Image.Resampling.BICUBIC))


def _copy(image: np.ndarray, k: int) -> np.ndarray:
    """LC25000-style augmented copies: rotated by 90 degrees, mirrored, darker and less contrasted."""
    altered = np.rot90(image, 1) if k == 1 else np.fliplr(image).astype(float) * 0.8 + 25
    return np.ascontiguousarray(altered).astype(np.uint8)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """Class folders of 64 px RGB PNGs; returns (root, {image path: cluster id}) for the planted clusters."""
    root = tmp_path_factory.mktemp("lung") / "lc25000_like"
    rng = np.random.default_rng(0)
    cluster_of = {}
    for name in CLASSES:
        folder = root / name
        folder.mkdir(parents=True)
        for c in range(CLUSTERS_PER_CLASS):
            original = _pattern(rng)
            for k in range(COPIES):
                path = folder / f"{name}_c{c}_{k}.png"
                Image.fromarray(original if k == 0 else _copy(original, k)).save(path)
                cluster_of[str(path)] = f"{name}/{c}"
        for s in range(SINGLES_PER_CLASS):
            Image.fromarray(_pattern(rng)).save(folder / f"{name}_single{s}.png")
    return root, cluster_of


def _splits_of_clusters(doc: dict, cluster_of: dict) -> dict[str, set]:
    found = defaultdict(set)
    for split in ("training", "validation", "test"):
        for item in doc[split]:
            if item["image"] in cluster_of:
                found[cluster_of[item["image"]]].add(split)
    return found


def test_grouped_split_keeps_every_planted_cluster_in_one_split(tree, tmp_path):
    root, cluster_of = tree
    ratios = {"training": 0.5, "validation": 0.25, "test": 0.25}
    plain = load_datalist(build_datalist(root, tmp_path / "plain.json", ratios=ratios, seed=0))
    spanning = [c for c, splits in _splits_of_clusters(plain, cluster_of).items() if len(splits) > 1]
    assert spanning, (
        "the plain split should put some copies of one image in two splits (else this test shows nothing)"
    )

    grouper = near_duplicate_grouper(read_pixels)
    grouped = load_datalist(
        build_datalist(root, tmp_path / "grouped.json", ratios=ratios, seed=0, grouper=grouper)
    )
    clusters = _splits_of_clusters(grouped, cluster_of)
    assert len(clusters) == len(CLASSES) * CLUSTERS_PER_CLASS
    assert all(len(splits) == 1 for splits in clusters.values()), clusters
    report = grouped["near_duplicate_grouping"]
    assert report["duplicate_clusters"] == len(CLASSES) * CLUSTERS_PER_CLASS
    assert report["images_in_duplicate_clusters"] == len(cluster_of)
    assert report["largest_duplicate_cluster"] == COPIES
    assert report["groups"] == len(CLASSES) * (CLUSTERS_PER_CLASS + SINGLES_PER_CLASS)
    assert report["settings"]["confirm_pixels"] == 0.25  # the audit's default
    # every item carries its group; the split still follows the ratios per class (whole clusters of 3 moved)
    items = [i for s in ("training", "validation", "test") for i in grouped[s]]
    assert all(i["split_group"].startswith("g") for i in items)
    for c in range(len(CLASSES)):
        per_class = [
            sum(1 for i in grouped[s] if i["label"] == c) for s in ("training", "validation", "test")
        ]
        assert sum(per_class) == CLUSTERS_PER_CLASS * COPIES + SINGLES_PER_CLASS
        assert abs(per_class[0] - 10) <= COPIES and abs(per_class[2] - 5) <= COPIES, per_class


def test_grouping_options_are_the_audits_and_bad_ones_are_named(tree, tmp_path):
    root, _ = tree
    strict = build_datalist(
        root,
        tmp_path / "strict.json",
        seed=0,
        grouper=near_duplicate_grouper(read_pixels, confirm_pixels=0.0001),
    )
    report = load_datalist(strict)["near_duplicate_grouping"]
    assert report["settings"]["confirm_pixels"] == 0.0001
    assert (
        report["images_in_duplicate_clusters"] < 3 * len(CLASSES) * CLUSTERS_PER_CLASS
    )  # copies no longer confirmed
    with pytest.raises(TypeError, match=r"unknown near-duplicate option\(s\) \['hamming'\]"):
        near_duplicate_grouper(read_pixels, hamming=4)
    with pytest.raises(TypeError, match=r"unknown near-duplicate option\(s\) \['hamming'\]"):
        datalist_for(root, tmp_path / "bad", seed=0, group_near_duplicates={"hamming": 4})
    with pytest.raises(ValueError, match="grouping needs read_image"):
        near_duplicate_grouper(None)


def test_grouping_is_part_of_the_split_spec_and_fingerprint(tree, tmp_path):
    root, cluster_of = tree
    ratios = {"training": 0.7, "validation": 0.15, "test": 0.15}
    plain_spec = split_spec(root, 0, ratios)
    grouped_spec = split_spec(root, 0, ratios, group_near_duplicates={"confirm_pixels": 0.35})
    assert "group_near_duplicates" not in plain_spec  # existing splits keep their fingerprints
    assert grouped_spec["group_near_duplicates"] == {"confirm_pixels": 0.35}
    assert fingerprint(plain_spec) != fingerprint(grouped_spec)

    path = datalist_for(
        root, tmp_path / "run", seed=0, ratios=ratios, group_near_duplicates={"confirm_pixels": 0.35}
    )
    doc = load_datalist(path)
    assert doc["split_spec"] == grouped_spec and doc["split_fingerprint"] == fingerprint(grouped_spec)
    assert all(len(s) == 1 for s in _splits_of_clusters(doc, cluster_of).values())
    assert doc["near_duplicate_grouping"]["duplicate_clusters"] == len(CLASSES) * CLUSTERS_PER_CLASS
