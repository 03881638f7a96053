"""Label files as people write them: each awkward form is generated here and read by
`build_datalist` / `cit datalist`; every problem is one line naming the file and the column."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from toolkit.bundle.datalists import datalist_for, fingerprint, split_spec
from toolkit.cli import main as cit
from toolkit.data import build_datalist, load_datalist

N = 20  # images per generated set: 10 per class


def _images(folder: Path, n: int = N, name: str = "{i:03d}.png", mode: str = "L") -> list[Path]:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        pixels = rng.integers(0, 255, (12, 16, 3) if mode != "L" else (12, 16), dtype=np.uint8)
        path = folder / name.format(i=i)
        Image.fromarray(pixels).convert(mode).save(path)
        paths.append(path)
    return paths


def _items(doc: dict) -> list[dict]:
    return [i for split in ("training", "validation", "test") for i in doc.get(split, [])]


def _labels_by_file(doc: dict) -> dict[str, str]:
    return {Path(i["image"]).name: i["label_name"] for i in _items(doc)}


def _build(source: Path, tmp_path: Path, **options) -> dict:
    return load_datalist(build_datalist(source, tmp_path / "datalist.json", seed=0, **options))


# ---------------------------------------------------------------------------------------------
# the awkward forms


def test_head_ct_layout_id_column_with_leading_space_and_integer_labels(tmp_path, caplog):
    """The issue's set: head_ct/000.png ..., labels.csv `id, hemorrhage` (a space before the
    label name), no path column. The folder tree gives one class, so the CSV is used."""
    _images(tmp_path / "head_ct" / "head_ct")
    lines = ["id, hemorrhage"] + [f"{i}, {int(i >= N // 2)}" for i in range(N)]
    (tmp_path / "head_ct" / "labels.csv").write_text("\n".join(lines) + "\n")
    with caplog.at_level(logging.INFO):
        doc = _build(tmp_path / "head_ct", tmp_path)
    assert "the folder tree gives 1 class(es) ['head_ct']; labels from labels.csv" in caplog.text
    assert "image 'id' (its values match image file names" in caplog.text
    assert "label 'hemorrhage' (the only other column)" in caplog.text
    assert doc["labels"] == ["0", "1"] and len(_items(doc)) == N
    assert _labels_by_file(doc)["007.png"] == "0" and _labels_by_file(doc)["013.png"] == "1"
    assert doc["columns"]["image"] == "id" and doc["columns"]["label"] == "hemorrhage"
    # --classes names the integer labels, in order
    named = _build(tmp_path / "head_ct" / "labels.csv", tmp_path, classes=["normal", "hemorrhage"])
    assert named["labels"] == ["normal", "hemorrhage"] and _labels_by_file(named)["013.png"] == "hemorrhage"


def test_image_pattern_builds_the_path_from_an_id(tmp_path):
    _images(tmp_path / "scans", name="case_{i:03d}.png")
    lines = ["ID,diagnosis"] + [f"{i},{'benign' if i % 2 else 'malignant'}" for i in range(N)]
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    doc = _build(tmp_path / "labels.csv", tmp_path, image_pattern="scans/case_{ID:03d}.png")
    assert _labels_by_file(doc)["case_003.png"] == "benign" and len(_items(doc)) == N
    assert doc["columns"]["image_pattern"] == "scans/case_{ID:03d}.png"
    with pytest.raises(ValueError, match=r"labels.csv: no image-pattern column 'IDs' \(closest: 'ID'\)"):
        _build(tmp_path / "labels.csv", tmp_path, image_pattern="scans/case_{IDs:03d}.png")
    (tmp_path / "odd.csv").write_text("ID,diagnosis\n1,benign\nseven,malignant\n")
    with pytest.raises(
        ValueError,
        match=r"odd.csv: image pattern .*do not fit the pattern: 1 \(first 1: line 3: "
        r"ID = 'seven' is not an integer\)",
    ):
        _build(tmp_path / "odd.csv", tmp_path, image_pattern="scans/case_{ID:03d}.png")


def test_bom_semicolons_windows_encoding_and_excel_sep_line(tmp_path):
    """Excel on a European Windows machine: `sep=;` first line, semicolons, Windows-1252, CRLF."""
    _images(tmp_path / "img")
    rows = ["sep=;", "Fichier;Catégorie;Patient ID"]
    rows += [f"img/{i:03d}.png;{'bénin' if i % 2 else 'malin'};P{i // 2}" for i in range(N)]
    (tmp_path / "excel.csv").write_bytes("\r\n".join(rows).encode("cp1252") + b"\r\n")
    doc = _build(tmp_path / "excel.csv", tmp_path, image_column="fichier", label_column="catégorie")
    assert doc["labels"] == ["bénin", "malin"] and len(_items(doc)) == N
    assert {i["patient_id"] for i in _items(doc)} == {f"P{k}" for k in range(N // 2)}  # found by name
    # UTF-8 with a byte-order mark, spaces around names and values, tab separated
    lines = ["\ufeff image \t label "] + [f" img/{i:03d}.png \t {'a' if i % 2 else 'b'} " for i in range(N)]
    (tmp_path / "bom.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    doc = _build(tmp_path / "bom.tsv", tmp_path)
    assert doc["labels"] == ["a", "b"] and _labels_by_file(doc)["001.png"] == "a"


def test_several_label_columns_make_a_multi_label_set(tmp_path):
    _images(tmp_path / "img")
    lines = ["file,effusion,mass,age"] + [
        f"img/{i:03d}.png,{i % 2},{'yes' if i % 3 == 0 else 'no'},{40 + i}" for i in range(N)
    ]
    (tmp_path / "findings.csv").write_text("\n".join(lines) + "\n")
    doc = _build(tmp_path / "findings.csv", tmp_path, label_column=["effusion", "mass"])
    assert doc["multi_label"] is True and doc["labels"] == ["effusion", "mass"]
    by_file = {Path(i["image"]).name: i["label"] for i in _items(doc)}
    assert by_file["003.png"] == [1, 1] and by_file["004.png"] == [0, 0]
    (tmp_path / "bad.csv").write_text("file,effusion,mass\nimg/000.png,1,maybe\nimg/001.png,0,1\n")
    with pytest.raises(
        ValueError,
        match=r"bad.csv: label columns \['effusion', 'mass'\]: values that are neither "
        r"0/1 nor yes/no: 1 \(first 1: line 2: mass = 'maybe'\)",
    ):
        _build(tmp_path / "bad.csv", tmp_path, label_column=["effusion", "mass"])


def test_unknown_column_names_the_closest(tmp_path):
    _images(tmp_path / "img")
    lines = ["path,hemorrhage"] + [f"img/{i:03d}.png,{i % 2}" for i in range(N)]
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(
        ValueError,
        match=r"labels.csv: no label column 'hemorage' \(closest: 'hemorrhage'\); "
        r"columns are \['path', 'hemorrhage'\]",
    ):
        _build(tmp_path / "labels.csv", tmp_path, label_column="hemorage")
    (tmp_path / "three.csv").write_text("path,age,sex\nimg/000.png,3,F\n")
    with pytest.raises(
        ValueError,
        match=r"three.csv: no label column: none of \['label', .*\] is present and 2 "
        r"other columns are \['age', 'sex'\]; name it with --label-column",
    ):
        _build(tmp_path / "three.csv", tmp_path)


def test_missing_files_unlabelled_and_duplicate_rows_are_one_line_errors(tmp_path, caplog):
    _images(tmp_path / "img")
    lines = (
        ["image,label"]
        + [f"img/{i:03d}.png,{i % 2}" for i in range(N)]
        + [f"img/gone_{k}.png,1" for k in range(7)]
    )
    (tmp_path / "missing.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(
        ValueError,
        match=r"missing.csv: column 'image': rows whose image file is missing under .*: "
        r"7 \(first 5: img/gone_0.png, img/gone_1.png, .*img/gone_4.png\)$",
    ):
        _build(tmp_path / "missing.csv", tmp_path)
    with caplog.at_level(logging.WARNING):
        doc = _build(tmp_path / "missing.csv", tmp_path, skip_missing=True)
    assert len(_items(doc)) == N and "gone_0.png" in caplog.text

    (tmp_path / "unlabelled.csv").write_text(
        "image,label\nimg/000.png,a\nimg/001.png,\nimg/002.png, \nimg/003.png,b\n"
    )
    with pytest.raises(
        ValueError,
        match=r"unlabelled.csv: column 'label': rows without a label: 2 \(first 2: line 3, line 4\)",
    ):
        _build(tmp_path / "unlabelled.csv", tmp_path)

    (tmp_path / "twice.csv").write_text("image,label\nimg/000.png,a\nimg/001.png,b\n./img/000.png,a\n")
    with pytest.raises(
        ValueError,
        match=r"twice.csv: column 'image': images listed more than once: 1 \(first 1: "
        r"./img/000.png \(lines 2 and 4\)\)",
    ):
        _build(tmp_path / "twice.csv", tmp_path)


def test_split_column_and_cli_prints_counts_or_one_line_errors(tmp_path, capsys):
    _images(tmp_path / "img")
    lines = ["image,label,fold"] + [
        f"img/{i:03d}.png,{'ab'[i % 2]},{'train' if i < 14 else 'test'}" for i in range(N)
    ]
    (tmp_path / "published.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "dl.json"
    assert (
        cit(["datalist", str(tmp_path / "published.csv"), "--out", str(out), "--split-column", "fold"]) == 0
    )
    printed = capsys.readouterr().out
    assert "training" in printed and "test" in printed and "colour modes: L 20" in printed
    doc = load_datalist(out)
    assert len(doc["test"]) == 6 and doc["ratios"] == "published"

    (tmp_path / "folds.csv").write_text("image,label,fold\nimg/000.png,a,1\nimg/001.png,b,2\n")
    code = cit(["datalist", str(tmp_path / "folds.csv"), "--out", str(out), "--split-column", "fold"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "folds.csv: split column 'fold': values that name no split (train / val / test ...): 2" in err

    code = cit(["datalist", str(tmp_path / "published.csv"), "--out", str(out), "--image-column", "imgae"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "published.csv: no image column 'imgae' (closest: 'image')" in err

    (tmp_path / "unsplit.csv").write_text("\n".join(line.rsplit(",", 1)[0] for line in lines) + "\n")
    code = cit(["datalist", str(tmp_path / "unsplit.csv"), "--out", str(out), "--ratios", "70:30"])
    err = capsys.readouterr().err
    assert code == 2 and "unnamed ratios need all three parts, training:validation:test" in err
    code = cit(
        ["datalist", str(tmp_path / "unsplit.csv"), "--out", str(out), "--ratios", "training=0.5,test=0.5"]
    )
    assert code == 0 and "test" in capsys.readouterr().out
    assert {k: len(v) for k, v in load_datalist(out).items() if k in ("training", "validation", "test")} == {
        "training": 10,
        "test": 10,
    }


# ---------------------------------------------------------------------------------------------
# folders


def test_folder_tree_with_one_class_is_an_error_unless_meant(tmp_path):
    _images(tmp_path / "study" / "positives")
    with pytest.raises(
        ValueError,
        match=r"study: the folder tree gives one class \('positives', 20 images\).*"
        r"--allow-single-class",
    ):
        _build(tmp_path / "study", tmp_path)
    assert _build(tmp_path / "study", tmp_path, allow_single_class=True)["labels"] == ["positives"]
    doc = _build(tmp_path / "study", tmp_path, classes=["negatives", "positives"])
    assert doc["labels"] == ["negatives", "positives"] and {i["label"] for i in _items(doc)} == {1}


def test_folder_with_class_folders_keeps_them_and_column_options_pick_the_csv(tmp_path, caplog):
    root = tmp_path / "ds"
    _images(root / "cats", n=6)
    _images(root / "dogs", n=6)
    lines = ["file,animal"] + [
        f"{c}/{i:03d}.png,{'cat' if i < 3 else 'dog'}" for c in ("cats", "dogs") for i in range(6)
    ]
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    with caplog.at_level(logging.INFO):
        doc = _build(root, tmp_path)
    assert doc["labels"] == ["cats", "dogs"] and doc["source_kind"] == "class_folders"
    assert "labels.csv is not used" in caplog.text
    doc = _build(root, tmp_path, label_column="animal")
    assert doc["labels"] == ["cat", "dog"] and doc["source_kind"] == "csv"
    assert _labels_by_file(doc)["004.png"] == "dog"
    (root / "other.csv").write_text("file,animal\n")
    with pytest.raises(
        ValueError,
        match=r"ds: label_column need one label file \(CSV / TSV\) in the folder; found 2: "
        r"labels.csv, other.csv",
    ):
        _build(root, tmp_path, label_column="animal")


def test_bundle_split_passes_the_options_and_fingerprints_them(tmp_path):
    """What a bundle's `split` dict reaches: datalist_for passes the label-file options to
    build_datalist and records the given ones in the split spec."""
    _images(tmp_path / "data" / "scans", name="s{i}.png")
    lines = ["scan_no,finding"] + [f"{i},{'ab'[i % 2]}" for i in range(N)]
    (tmp_path / "data" / "table.csv").write_text("\n".join(lines) + "\n")
    split = {
        "ratios": {"training": 0.6, "validation": 0.2, "test": 0.2},
        "val_fraction": 0.15,
        "image_pattern": "scans/s{scan_no}.png",
        "label_column": "finding",
    }
    path = datalist_for(tmp_path / "data" / "table.csv", tmp_path / "out", seed=0, **split)
    doc = json.loads(Path(path).read_text())
    assert doc["split_spec"]["image_pattern"] == "scans/s{scan_no}.png" and doc["labels"] == ["a", "b"]
    assert sum(len(doc[s]) for s in ("training", "validation", "test")) == N
    plain = split_spec(tmp_path, 0, None, 0.15)
    assert "image_column" not in plain  # not given: not in the spec, so old fingerprints stay
    assert fingerprint(plain) == fingerprint(split_spec(tmp_path, 0, None, 0.15, image_column=None))


# ---------------------------------------------------------------------------------------------
# hostile label files (issue #26)


def test_an_id_in_the_label_column_is_not_a_million_class_indices(tmp_path, caplog):
    """An accession number in the label column once made 1,000,001 classes (a 30 MB JSON)."""
    _images(tmp_path / "img")
    lines = ["image,label"] + [f"img/{i:03d}.png,{0 if i % 2 else 1000000}" for i in range(N)]
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(
        ValueError,
        match=r"labels.csv: column 'label': integer labels \(0, 1000000\) are not class "
        r"indices 0, 1, ...: they would make 1000001 classes",
    ):
        _build(tmp_path / "labels.csv", tmp_path)
    assert not (tmp_path / "datalist.json").exists()
    # a few empty indices are class indices still, said in a warning
    lines = ["image,label"] + [f"img/{i:03d}.png,{0 if i % 2 else 2}" for i in range(N)]
    (tmp_path / "gap.csv").write_text("\n".join(lines) + "\n")
    with caplog.at_level(logging.WARNING):
        doc = _build(tmp_path / "gap.csv", tmp_path)
    assert doc["labels"] == ["0", "1", "2"] and "these classes have no image: 1 file(s): 1" in caplog.text


def test_a_label_file_naming_files_that_are_not_images_or_lie_outside_the_root(tmp_path, caplog):
    """/etc/passwd once became an image of the datalist with no word."""
    _images(tmp_path / "data" / "img")
    outside = _images(tmp_path / "elsewhere", n=2, name="x{i}.png")
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0\n")
    rows = [f"img/{i:03d}.png,{'a' if i % 2 else 'b'}" for i in range(N)]
    (tmp_path / "data" / "bad.csv").write_text("image,label\n" + "\n".join(rows + [f"{secret},a"]) + "\n")
    with pytest.raises(
        ValueError,
        match=r"bad.csv: column 'image': rows naming a file that is not an image .*"
        r"line 22: .*secret.txt",
    ):
        _build(tmp_path / "data" / "bad.csv", tmp_path)
    (tmp_path / "data" / "far.csv").write_text("image,label\n" + "\n".join(rows + [f"{outside[0]},a"]) + "\n")
    with caplog.at_level(logging.WARNING):
        doc = _build(tmp_path / "data" / "far.csv", tmp_path)
    assert len(_items(doc)) == N + 1
    assert "rows whose image lies outside the image root" in caplog.text and "x0.png" in caplog.text


def test_class_names_that_would_break_columns_configs_or_reports_are_refused(tmp_path):
    _images(tmp_path / "img")
    for bad, reason in (
        ("%configs/base/common.json#imports", "starts with '%'"),
        ("new\nline", "holds a control character"),
        ("Effusion", "'effusion' and 'Effusion' are the same class name"),
    ):
        names = {0: "effusion", 1: bad}
        lines = ["image,label"] + [f'img/{i:03d}.png,"{names[i % 2]}"' for i in range(N)]
        (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
        with pytest.raises(ValueError, match=r"datalist.json: class names: .*" + re.escape(reason)):
            _build(tmp_path / "labels.csv", tmp_path)
