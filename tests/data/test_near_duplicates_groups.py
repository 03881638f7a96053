"""Splits that keep known copies together: a label file's group column (``cit datalist --group-column``,
LC25000's ``source_tile``), kept in one split like a patient id and together with it."""

from __future__ import annotations

import csv
from collections import defaultdict

import numpy as np
import pytest
from PIL import Image

from toolkit.data import build_datalist, load_datalist
from toolkit.data.datalist import split_keys


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    """60 tiny PNGs in 20 tiles of 3, two classes; a patient column that links tiles 0 and 1 through
    one patient (images of tile 0 and of tile 1 share patient p0). Returns the label file."""
    root = tmp_path_factory.mktemp("tiles")
    rng = np.random.default_rng(0)
    rows = []
    for tile in range(20):
        for copy in range(3):
            name = f"t{tile}_{copy}.png"
            Image.fromarray((rng.random((8, 8)) * 255).astype(np.uint8)).save(root / name)
            patient = "p0" if tile in (0, 1) and copy == 0 else f"q{tile}_{copy}"
            rows.append(
                {
                    "file": name,
                    "label": "a" if tile % 2 else "b",
                    "source_tile": f"tile{tile}",
                    "patient_id": patient,
                }
            )
    path = root / "labels.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _splits_of(doc: dict, key: str) -> dict[str, set[str]]:
    where = defaultdict(set)
    for split in split_keys(doc):
        for item in doc[split]:
            where[item[key]].add(split)
    return where


def test_group_column_keeps_each_tile_and_patient_in_one_split(table, tmp_path):
    out = build_datalist(table, tmp_path / "d.json", ratios="60:20:20", seed=3, group_column="source_tile")
    doc = load_datalist(out)
    tiles = _splits_of(doc, "group")
    assert len(tiles) == 20 and all(len(s) == 1 for s in tiles.values()), tiles
    assert all(len(s) == 1 for s in _splits_of(doc, "patient_id").values())
    # tiles 0 and 1 share a patient, so they are one split group: 19 groups of 20 tiles
    assert doc["column_groups"] == 19 and tiles["tile0"] == tiles["tile1"]
    assert sum(len(doc[s]) for s in split_keys(doc)) == 60


def test_without_the_group_column_tiles_are_split_apart(table, tmp_path):
    """The same file split by patient only: copies of a tile land in different splits (what the
    group column prevents), so the test above can fail."""
    doc = load_datalist(build_datalist(table, tmp_path / "d.json", ratios="60:20:20", seed=3))
    by_tile = defaultdict(set)
    for split in split_keys(doc):
        for item in doc[split]:
            by_tile[item["image"].rsplit("/", 1)[-1].split("_")[0]].add(split)
    assert any(len(s) > 1 for s in by_tile.values())


def test_unknown_group_column_is_a_one_line_error(table, tmp_path, capsys):
    from toolkit.cli import main

    status = main(
        ["datalist", str(table), "--out", str(tmp_path / "d.json"), "--group-column", "source_tiles"]
    )
    err = capsys.readouterr().err
    assert status == 2, err
    assert "no group column 'source_tiles' (closest: 'source_tile')" in err
    assert "Traceback" not in err
