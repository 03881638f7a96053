"""The audit's confound check: a set built like the issue's head-CT set (12 RGBA files, all in one
class) is flagged; the same files spread over both classes are not. Files are written here."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from toolkit.cli import main as cit
from toolkit.cli.audit import read_image
from toolkit.data.audit import confounds, cramers_v, run_audit, size_buckets
from toolkit.data.datalist import save_datalist

LABELS = ["normal", "hemorrhage"]


def _head_ct_like(root, rgba_labels: list[int], seed: int = 0) -> list[dict]:
    """200 PNGs of mixed sizes, 188 RGB + 12 RGBA (the RGBA ones get ``rgba_labels``), 100 per class."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    items, rgba_left = [], list(rgba_labels)
    for i in range(200):
        label = i % 2
        w, h = int(rng.integers(40, 90)), int(rng.integers(40, 90))
        coarse = Image.fromarray((rng.random((5, 5)) * 255).astype(np.uint8)).resize(
            (w, h), Image.Resampling.BICUBIC
        )
        rgb = np.dstack([np.asarray(coarse)] * 3)
        path = root / f"{i:03d}.png"
        if label in rgba_left:
            rgba_left.remove(label)
            Image.fromarray(np.dstack([rgb, np.full((h, w), 255, np.uint8)]), "RGBA").save(path)
        else:
            Image.fromarray(rgb).save(path)
        items.append({"image": str(path), "label": label})
    return items


def _datalist(tmp_path, items):
    splits = {"training": items[:160], "validation": items[160:180], "test": items[180:]}
    return save_datalist(tmp_path / "datalist.json", splits, LABELS)


def test_rgba_files_in_one_class_are_flagged(tmp_path, capsys):
    datalist = _datalist(tmp_path, _head_ct_like(tmp_path / "img", rgba_labels=[1] * 12))
    assert (
        cit(["audit", "--datalist", str(datalist), "--out-dir", str(tmp_path / "audit"), "--no-regroup"]) == 0
    )
    printed = capsys.readouterr().out
    assert "colour modes: RGB 188, RGBA 12" in printed and "CONFOUND FOUND: colour mode RGBA" in printed
    report = json.loads((tmp_path / "audit" / "audit.json").read_text())
    found = report["confounds"]
    assert found["found"]
    flagged = {(f["property"], f["kind"], f.get("value")) for f in found["flags"]}
    assert flagged == {("colour mode", "shortcut", "RGBA"), ("channels", "shortcut", "4")}
    [mode] = [f for f in found["flags"] if f["property"] == "colour mode"]
    assert (mode["images"], mode["in_class"], mode["class"], mode["class_share"]) == (
        12,
        12,
        "hemorrhage",
        0.5,
    )
    assert mode["p_value"] < 2e-4  # C(100,12) / C(200,12)
    colour = found["properties"]["colour mode"]
    assert colour["images"] == {"RGB": 188, "RGBA": 12}
    assert colour["counts"]["RGBA"] == {"training": {"hemorrhage": 12}}  # per split and class
    assert 0.2 < colour["cramers_v"]["label"] < 0.5  # weak overall: the value rule is what catches it
    assert report["image_stats"]["channels"] == {"3": 188, "4": 12}  # as stored: RGBA = 4
    sizes = report["image_stats"]["size"]
    width, height = Image.open(tmp_path / "img" / "000.png").size
    assert f"{width}x{height}" in sizes  # width first
    md = (tmp_path / "audit" / "audit.md").read_text()
    assert "**CONFOUND FOUND**" in md and "### colour mode" in md
    assert "| RGBA | 0 | 12 | 0 | 0 | 0 | 0 | 12 |" in md
    assert "size (W x H, width first" in md and "channels as stored (RGBA = 4): 3: 188, 4: 12" in md
    assert "### size bucket (W x H)" in md  # 200 distinct-ish sizes: power-of-two bands


def test_rgba_files_spread_over_both_classes_are_not_flagged(tmp_path):
    datalist = _datalist(tmp_path, _head_ct_like(tmp_path / "img", rgba_labels=[0] * 6 + [1] * 6))
    report = run_audit(datalist, tmp_path / "audit", read_image, write_regrouped=False)
    found = report["confounds"]
    assert not found["found"] and found["flags"] == []
    assert found["properties"]["colour mode"]["cramers_v"]["label"] == 0.0
    assert "No property is flagged." in (tmp_path / "audit" / "audit.md").read_text()


def test_statistics_on_known_tables():
    # all of one class in one value, the other class in the other: V = 1
    v, p = cramers_v(np.array([[50, 0], [0, 50]]))
    assert v == pytest.approx(1.0, abs=0.02) and p < 1e-20
    v, p = cramers_v(np.array([[25, 25], [25, 25]]))
    assert v == 0.0 and p == pytest.approx(1.0)
    assert size_buckets(["224x224", "512x256"]) == ["224 x 224", "512 x 256"]
    many = [f"{200 + k}x{100 + k}" for k in range(11)]
    assert size_buckets(many)[0] == "128-255 x 64-127" and size_buckets(many)[-1] == "128-255 x 64-127"
    # multi-label: each class is tested on its own
    items = [{"label": [int(k < 30), int(k % 2)], "_split": "training"} for k in range(60)]
    described = [{"photometric": "RGBA" if k < 30 else "L", "format": "PNG"} for k in range(60)]
    found = confounds(items, described, ["effusion", "mass"], ["training"], multi_label=True)
    assert [(f["property"], f["target"], f["kind"]) for f in found["flags"]][:1] == [
        ("colour mode", "effusion", "association")
    ]
    assert all(f["target"] == "effusion" for f in found["flags"])
