"""Manifests met in the wild name their columns differently; build_datalist finds them."""

import numpy as np
import pytest
from PIL import Image

from toolkit.data import build_datalist, load_datalist


@pytest.mark.parametrize(
    "image_col, label_col", [("filename", "class"), ("file", "diagnosis"), ("path", "label")]
)
def test_common_image_and_label_column_names(tmp_path, image_col, label_col):
    rng = np.random.default_rng(0)
    rows = [f"{image_col},{label_col}"]
    for i in range(12):
        name = f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(tmp_path / name)
        rows.append(f"{name},{'benign' if i % 2 else 'malignant'}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    doc = load_datalist(build_datalist(tmp_path / "labels.csv", tmp_path / "datalist.json", seed=0))
    items = [i for split in ("training", "validation", "test") for i in doc.get(split, [])]
    assert doc["labels"] == ["benign", "malignant"]
    assert sorted(i["image"] for i in items) == sorted(str(tmp_path / f"img{i}.png") for i in range(12))
