"""`cit infer` over an archive nobody curated (issue 10): crafted and broken inputs beside the real broken
DICOMs of the shared data. One row per input, the documented exit code, nothing written outside --output,
output names that cannot escape, overflow or collide, and no formula a spreadsheet would run."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import sys

import pydicom
import pytest
from infer_helpers import (
    LONG_UID,
    infer_args,
    make_deep_folder,
    make_dicom,
    png_bytes,
    read_csv,
    snapshot,
    write_hostile_tree,
)

from toolkit.cli import main
from toolkit.inference.discovery import discover_inputs
from toolkit.inference.runner import EXIT_INPUTS_FAILED, EXIT_OK, EXIT_RUN_FAILED


def _run(args: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(args)
    return code, err.getvalue()


@pytest.fixture(scope="module")
def hostile_run(bundle_dir, tiny_ckpt, shared_data, tmp_path_factory):
    """One run with --frames each --gradcam --dicom-sr over the hostile tree; the file system below the
    test's folder is walked before and after."""
    base = tmp_path_factory.mktemp("hostile")
    inputs, out, victim = base / "in", base / "out", base / "victim"
    expected = write_hostile_tree(inputs, victim, shared_data / "dicom" / "broken")
    make_deep_folder(inputs)
    before = snapshot(base)
    code, log = _run(
        infer_args(bundle_dir, tiny_ckpt, inputs, out, "--frames", "each", "--gradcam", "--dicom-sr")
    )
    after = snapshot(base, skip=out)
    return code, log, base, inputs, out, expected, before, after


def test_one_row_per_input_and_the_documented_exit_code(hostile_run):
    code, log, _, _, out, expected, _, _ = hostile_run
    assert code == EXIT_INPUTS_FAILED, log  # some inputs failed, none stopped the run
    rows = read_csv(out / "predictions.csv")
    got = {(r["path"], int(r["frame"]) if r["frame"] else None): r for r in rows}
    assert len(got) == len(rows), "one row per input (and frame)"
    deep = [r for r in rows if r["path"].startswith("deep/")]
    assert len(deep) == 1 and deep[0]["status"] == "error" and deep[0]["kind"] == "folder", deep
    assert "cannot list folder" in deep[0]["reason"] and "too long" in deep[0]["reason"]
    assert set(got) - {(deep[0]["path"], None)} == set(expected)
    for key, status in expected.items():
        if status is not None:
            assert got[key]["status"] == status, (key, got[key]["reason"])
        assert got[key]["status"] in ("ok", "error", "skipped")
        assert got[key]["status"] == "ok" or got[key]["reason"], key
    assert "Traceback" not in log


def test_links_loops_and_special_files_are_rows_with_reasons(hostile_run):
    _, _, _, _, out, _, _, _ = hostile_run
    reason = {r["path"]: r["reason"] for r in read_csv(out / "predictions.csv")}
    assert reason["links/loop.dcm"] == "cannot stat link: symbolic link loop"
    assert reason["links/LOOP"] == "cannot stat link: symbolic link loop"
    assert reason["links/dangling.dcm"] == "dangling symbolic link (its target does not exist)"
    assert reason["links/here/"] == reason["links/outside/"] == "symbolic link to a folder (not followed)"
    assert "not a regular file" in reason["special/fifo.dcm"]
    # refused from its header by the read limits (toolkit.transforms.limits), before Pillow decodes it
    assert "100,000 x 100,000" in reason["broken/bomb.png"] and "CIT_MAX_PIXELS" in reason["broken/bomb.png"]


def test_nothing_is_written_outside_the_output_folder(hostile_run):
    _, log, base, _, out, _, before, after = hostile_run
    assert after == {p: v for p, v in before.items()}, (
        "files outside --output were created, changed or removed"
    )
    assert not (base / "escaped.dcm").exists() and not list((base / "victim").iterdir())
    srs = sorted((out / "sr").iterdir())
    assert srs and all(p.is_file() and p.suffix == ".dcm" for p in srs), "no sub-folders under sr/"
    names = {p.stem for p in srs}
    for name in names:
        assert (
            re.fullmatch(r"[0-9]+(\.[0-9]+)*", name)
            and len(name) <= 64
            or re.fullmatch(r"uid-[0-9a-f]{16}", name)
        )
    # crafted UIDs are never copied into a report: those studies get none, and their rows say why
    found = {str(pydicom.dcmread(p).StudyInstanceUID) for p in srs}
    assert not found & {"../../escaped", "1.2.3/4.5.6", "1." * 200 + "1"}, found
    rows = {r["path"]: r for r in read_csv(out / "predictions.csv")}
    for rel in ("uids/escape/IM1", "uids/slash/IM1", "uids/long/IM1"):
        assert rows[rel]["status"] == "ok"
        assert "no DICOM SR: its StudyInstanceUID is not a valid DICOM UID" in rows[rel]["reason"]


def test_overlay_names_are_short_unique_and_recorded_in_the_row(hostile_run):
    _, _, _, _, out, _, _, _ = hostile_run
    rows = [r for r in read_csv(out / "predictions.csv") if r["status"] == "ok" and r["kind"] != "nifti"]
    overlays = [r["gradcam"] for r in rows]
    assert all(overlays) and len(set(overlays)) == len(overlays), "one overlay per row, never shared"
    for name in overlays:
        assert name.startswith("gradcam/") and "/" not in name[len("gradcam/") :]
        assert len(os.path.basename(name).encode()) <= 100
        assert (out / name).is_file()
    by_path = {r["path"]: r["gradcam"] for r in rows}
    assert by_path["collide/a/b.png"] != by_path["collide/a__b.png"]
    assert by_path[f"long/{'/'.join([LONG_UID] * 5)}/IM0001.png"].endswith("_IM0001.png")
    assert len(list((out / "gradcam").iterdir())) == len(overlays)


def test_declared_frame_counts_are_checked_against_the_pixel_data(hostile_run):
    _, _, _, _, out, _, _, _ = hostile_run
    rows = read_csv(out / "predictions.csv")
    claims = [r for r in rows if r["path"].startswith("frames/") and "claims" in r["path"]]
    assert [(r["path"], r["frame"], r["status"]) for r in claims] == [
        ("frames/claims_100000", "", "error"),
        ("frames/rle_claims_50", "", "error"),
    ]
    assert (
        "NumberOfFrames 100000 does not match the pixel data: 3200 bytes hold 1 frame(s) of 40x40"
        == claims[0]["reason"]
    )
    assert "NumberOfFrames 50 does not match the pixel data" in claims[1]["reason"]
    assert [r["frame"] for r in rows if r["path"] == "frames/three"] == ["0", "1", "2"]


def test_discovery_of_a_huge_frame_claim_is_quick(tmp_path):
    make_dicom(tmp_path / "MF", study=1, series="a", index=0, declared_frames=2_000_000)
    items, _ = discover_inputs(tmp_path, frames="each")
    assert len(items) == 1 and items[0].status == "error" and "2000000" in items[0].reason


def test_csv_cells_that_would_be_formulas_are_neutralised_and_jsonl_is_exact(hostile_run):
    _, _, _, _, out, _, _, _ = hostile_run
    csv_paths = {r["path"] for r in read_csv(out / "predictions.csv")}
    jsonl = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    json_paths = {r["path"] for r in jsonl}
    for name in ("=1+1.png", "+SUM(1).png", "-2+3.png", "@A1.png"):
        assert f"formula/{name}" in json_paths  # exact
    # formula/... starts with 'f': only cells starting with = + - @ (tab, CR) are prefixed
    modality = {r["path"]: r["modality"] for r in read_csv(out / "predictions.csv")}
    assert modality["formula/IM_modality"] == "'=2+5"
    assert {r["path"]: r["modality"] for r in jsonl}["formula/IM_modality"] == "=2+5"
    assert not [
        c for r in read_csv(out / "predictions.csv") for c in r.values() if c[:1] in ("=", "+", "-", "@")
    ]
    assert "names/bad\\xff.png" in csv_paths and "names/new\\nline.png" in csv_paths


def test_formula_file_names_are_neutralised(tmp_path, bundle_dir, tiny_ckpt):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("=HYPERLINK(1).png", "+1.png", "-1.png", "@1.png"):
        (inputs / name).write_bytes(png_bytes(1))
    assert main(infer_args(bundle_dir, tiny_ckpt, inputs, tmp_path / "out")) == EXIT_OK
    assert sorted(r["path"] for r in read_csv(tmp_path / "out" / "predictions.csv")) == [
        "'+1.png",
        "'-1.png",
        "'=HYPERLINK(1).png",
        "'@1.png",
    ]
    jsonl = (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["path"] for line in jsonl) == [
        "+1.png",
        "-1.png",
        "=HYPERLINK(1).png",
        "@1.png",
    ]


def test_no_absolute_path_in_any_reason(hostile_run):
    _, log, base, _, out, _, _, _ = hostile_run
    for row in read_csv(out / "predictions.csv"):
        assert str(base) not in row["reason"] and not re.search(r"(^|\s)/\w+/", row["reason"]), row
    assert str(base / "in") not in log


@pytest.mark.parametrize("where", ["same", "inside"])
def test_output_inside_the_input_is_never_read_as_input(bundle_dir, tiny_ckpt, tmp_path, where):
    inputs = tmp_path / "in"
    make_dicom(inputs / "IM1", study=1, series="a", index=0)
    make_dicom(inputs / "sub" / "IM2", study=1, series="a", index=1)
    (inputs / "a.png").write_bytes(png_bytes(1))
    out = inputs if where == "same" else inputs / "results"
    for _ in range(3):  # reruns see their own SR, overlays, journals, CSV
        code = main(
            infer_args(bundle_dir, tiny_ckpt, inputs, out, "--gradcam", "--dicom-sr", "--retry-errors")
        )
        assert code == EXIT_OK
        assert sorted(r["path"] for r in read_csv(out / "predictions.csv")) == ["IM1", "a.png", "sub/IM2"]
    assert len(list((out / "gradcam").iterdir())) == 3 and len(list((out / "sr").iterdir())) == 1


@pytest.mark.skipif(sys.platform != "linux" or os.geteuid() == 0, reason="root reads every folder")
def test_an_unreadable_folder_is_one_error_row(tmp_path):
    (tmp_path / "locked").mkdir()
    (tmp_path / "locked" / "x.png").write_bytes(png_bytes(1))
    (tmp_path / "ok.png").write_bytes(png_bytes(2))
    os.chmod(tmp_path / "locked", 0)
    try:
        items, _ = discover_inputs(tmp_path)
    finally:
        os.chmod(tmp_path / "locked", 0o755)
    assert {(i.path, i.status) for i in items} == {("locked/", "error"), ("ok.png", None)}
    assert "permission denied" in items[0].reason.lower()


def test_output_sub_folders_linked_elsewhere_are_not_written_through(bundle_dir, tiny_ckpt, tmp_path, capsys):
    inputs, out, victim = tmp_path / "in", tmp_path / "out", tmp_path / "victim"
    make_dicom(inputs / "IM1", study=1, series="a", index=0)
    victim.mkdir()
    out.mkdir()
    os.symlink(victim, out / "sr")
    os.symlink(victim, out / "gradcam")
    assert main(infer_args(bundle_dir, tiny_ckpt, inputs, out, "--dicom-sr", "--gradcam")) == EXIT_RUN_FAILED
    assert not list(victim.iterdir())
    assert sorted(p.name for p in out.iterdir()) == ["gradcam", "sr"], "refused before writing anything"
    err = capsys.readouterr().err
    assert "gradcam is a symbolic link" in err and "never writes through a link in --output" in err


def test_one_study_uid_naming_two_patients_gets_no_report(bundle_dir, tiny_ckpt, tmp_path, capsys):
    """A result filed under the wrong patient is the worst thing this tool can do: instances that share a
    StudyInstanceUID but name different patients are never merged into one report."""
    inputs, out = tmp_path / "in", tmp_path / "out"
    shared = "1.2.826.0.1.3680043.10.999.1"
    make_dicom(inputs / "a" / "IM1", study="x", series="a", index=0, study_uid=shared, patient_id="P-1")
    make_dicom(
        inputs / "b" / "IM1",
        study="x",
        series="b",
        index=0,
        study_uid=shared,
        patient_id="P-2",
        patient_name="Roe^Richard",
    )
    make_dicom(inputs / "c" / "IM1", study="y", series="c", index=0)  # an ordinary study beside them
    make_dicom(inputs / "d" / "IM1", study="z", series="d", index=0, study_uid="1.2.3\r\n4")
    assert main(infer_args(bundle_dir, tiny_ckpt, inputs, out, "--dicom-sr")) == EXIT_OK
    reports = [pydicom.dcmread(p) for p in (out / "sr").iterdir()]
    assert [str(r.StudyInstanceUID) for r in reports] == [
        str(pydicom.dcmread(inputs / "c" / "IM1").StudyInstanceUID)
    ]
    assert reports[0].PatientID == "PAT-SECRET-42"
    rows = {r["path"]: r for r in read_csv(out / "predictions.csv")}
    for rel in ("a/IM1", "b/IM1"):
        assert rows[rel]["status"] == "ok"
        assert "no DICOM SR: instances of this study name 2 different patients" in rows[rel]["reason"]
    assert "not a valid DICOM UID" in rows["d/IM1"]["reason"] and not rows["c/IM1"]["reason"]
    err = capsys.readouterr().err
    assert f"no DICOM SR for study {shared}: instances of this study name 2 different patients" in err
    assert "P-1" not in err and "Roe" not in err, "no patient data in the message"


def test_patient_values_invalid_for_their_vr_are_left_empty_in_the_report(bundle_dir, tiny_ckpt, tmp_path):
    inputs, out = tmp_path / "in", tmp_path / "out"
    make_dicom(
        inputs / "IM1",
        study="n",
        series="n",
        index=0,
        patient_name="Doe^Jane\nINJECTED",
        accession="A" * 5000,
    )
    assert main(infer_args(bundle_dir, tiny_ckpt, inputs, out, "--dicom-sr")) == EXIT_OK
    (report,) = [pydicom.dcmread(p) for p in (out / "sr").iterdir()]
    assert report.PatientName == "" and report.AccessionNumber == ""
    assert report.PatientID == "PAT-SECRET-42", "valid values are kept"


def test_uid_and_overlay_names():
    from toolkit.inference.naming import UnsafeOutputPath, inside, overlay_file_name, uid_file_stem

    assert uid_file_stem("1.2.840.10008.1") == "1.2.840.10008.1"
    for bad in ("../../x", "/some/dir/victim", "1.2/3", "1." * 32 + "1", "", "1..2", "1.2 "):
        assert re.fullmatch(r"uid-[0-9a-f]{16}", uid_file_stem(bad)), bad
    assert uid_file_stem("../../x") != uid_file_stem("../../y")
    names = {overlay_file_name(p, f) for p in ("a/b.png", "a__b.png", "a/b", "a_b.png") for f in (None, 0)}
    assert len(names) == 8 and all("/" not in n and len(n) <= 80 for n in names)
    assert overlay_file_name("x/" * 500 + "IM.png", 3).endswith("_IM_frame3.png")
    with pytest.raises(UnsafeOutputPath, match="does not resolve inside the output folder"):
        inside("/tmp/out", "sr/../../etc/passwd")
