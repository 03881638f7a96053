"""Mask folders beside the images (COVID-19 Radiography Database layout) are not classified."""

import numpy as np
from PIL import Image

from toolkit.data import build_datalist, load_datalist


def test_masks_beside_images_are_left_out(tmp_path):
    rng = np.random.default_rng(0)
    for cls in ("COVID", "Normal", "Viral Pneumonia"):
        for sub in ("images", "masks"):
            folder = tmp_path / "db" / cls / sub
            folder.mkdir(parents=True)
            for i in range(4):
                Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(
                    folder / f"{cls}-{i}.png"
                )
    doc = load_datalist(build_datalist(tmp_path / "db", tmp_path / "datalist.json", seed=0))
    items = [i for split in ("training", "validation", "test") for i in doc.get(split, [])]
    assert doc["labels"] == ["COVID", "Normal", "Viral Pneumonia"]
    assert len(items) == 12
    assert all("/images/" in i["image"] for i in items)
