"""`cit audit` over an uncurated folder (issue 10, item 9): every file that was not audited is in audit.json
``unreadable`` with its reason, and nothing prints a traceback or a full path of an input."""

from __future__ import annotations

import json
import logging
import os
import shutil

from infer_helpers import make_sr, png_bomb, png_bytes

from toolkit.cli import main


def test_every_unaudited_file_is_listed_with_its_reason_and_no_traceback(
    shared_data, tmp_path, capfd, caplog
):
    tree, out = tmp_path / "data", tmp_path / "audit"
    for label in ("benign", "malignant"):
        for k in range(10):
            (tree / label).mkdir(parents=True, exist_ok=True)
            (tree / label / f"{k}.png").write_bytes(
                png_bytes(k + (100 if label == "benign" else 0), (48, 48))
            )
    hostile = {
        "benign/zero.dcm": b"",
        "benign/zero.png": b"",
        "benign/bomb.png": png_bomb(),
        "malignant/notes": b"text\n",
    }
    for rel, data in hostile.items():
        (tree / rel).write_bytes(data)
    os.symlink("loop.dcm", tree / "benign" / "loop.dcm")
    os.symlink(tmp_path / "nowhere.png", tree / "malignant" / "dangling.png")
    make_sr(tree / "malignant" / "report.dcm")
    for path in sorted(
        (shared_data / "dicom" / "broken").iterdir()
    ):  # real broken DICOMs, SR and RT plan included
        shutil.copyfile(path, tree / "malignant" / path.name)
    (tree / "labels.csv").write_text("file,label\n")  # metadata beside the images: not an input
    expected_files = {str(p) for p in tree.rglob("*") if not p.is_dir() and p.name != "labels.csv"}

    with caplog.at_level(logging.INFO):
        assert main(["audit", "--datalist", str(tree), "--out-dir", str(out), "--no-regroup"]) == 0
    printed = capfd.readouterr()
    said = printed.out + printed.err + caplog.text
    assert "Traceback" not in said
    leaked = [
        f for f in expected_files if f in said or f"{tree}/benign" in said or f"{tree}/malignant" in said
    ]
    assert not leaked, leaked[:5]  # no path of an input file (the folder given may be named in a summary)

    report = json.loads((out / "audit.json").read_text())
    unreadable = {u["image"]: u["error"] for u in report["unreadable"]}
    datalist = json.loads((out / "datalist.json").read_text())
    audited = {
        str(tree / it["image"]) if not os.path.isabs(it["image"]) else it["image"]
        for split in ("training", "validation", "test")
        for it in datalist.get(split, [])
    }
    assert audited | set(unreadable) == expected_files, "every file is audited or listed as unreadable"
    assert report["num_items"] + len(set(unreadable) - audited) == len(expected_files)
    for image, reason in unreadable.items():
        assert reason and str(tree) not in reason and "\n" not in reason, (image, reason)
    name = {os.path.relpath(k, tree): v for k, v in unreadable.items()}
    assert name["benign/zero.dcm"] == name["benign/zero.png"] == "empty file (0 bytes)"
    assert name["benign/loop.dcm"] == "symbolic link loop"
    assert "dangling" in name["malignant/dangling.png"]
    # refused by Pillow's header check or by the toolkit's read limit (whichever reads it first; both name the size)
    assert "DecompressionBomb" in name["benign/bomb.png"] or "CIT_MAX_PIXELS" in name["benign/bomb.png"]
    assert "not an image" in name["malignant/notes"]
    assert (
        "Basic Text SR" in name["malignant/report.dcm"]
        and "RT Plan" in name["malignant/rtplan_truncated.dcm"]
    )
    assert "audit.json" in printed.out and f"({len(unreadable)} unreadable)" in printed.out
