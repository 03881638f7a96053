"""How a loader batch reaches the network: stacked per shape in the worker, failures kept per item."""

from __future__ import annotations

import torch

from toolkit.inference.runner import collate_by_shape
from toolkit.io import remembered_digests, sha256_file


def test_a_batch_is_stacked_per_shape_and_keeps_every_record_in_order():
    small, large = torch.zeros(3, 4, 4), torch.ones(3, 8, 8)
    records = [
        {"index": 0, "image": small, "error": None},
        {"index": 1, "image": None, "error": "not an image"},
        {"index": 2, "image": large, "error": None},
        {"index": 3, "image": small + 2, "error": None},
    ]
    batch = collate_by_shape(records)
    assert [r["index"] for r in batch.records] == [0, 1, 2, 3]
    assert all("image" not in r for r in batch.records)  # images cross once, in the groups
    assert batch.records[1]["error"] == "not an image"
    shapes = {tuple(images.shape): positions for images, positions in batch.groups}
    assert shapes == {(2, 3, 4, 4): [0, 3], (1, 3, 8, 8): [2]}
    stacked = dict((tuple(i.shape), i) for i, _ in batch.groups)[(2, 3, 4, 4)]
    assert torch.equal(stacked[1], small + 2)


def test_a_batch_of_failures_has_no_groups():
    batch = collate_by_shape([{"index": 0, "image": None, "error": "truncated"}])
    assert batch.groups == [] and batch.records[0]["error"] == "truncated"


def test_digests_are_remembered_only_inside_the_block_and_never_for_a_changed_file(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"a" * 100)
    with remembered_digests():
        first = sha256_file(path)
        path.write_bytes(b"b" * 200)  # another size: another version of the file
        assert sha256_file(path) != first
    path.write_bytes(b"c" * 100)
    assert sha256_file(path) != first  # outside the block every call reads the file
