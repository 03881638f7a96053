"""`cit infer` over a folder of valid and broken inputs, with the real bundle bundles/resnet18_brain_ct."""

from __future__ import annotations

import json

import pytest
from infer_helpers import infer_args, make_dicom, read_csv

from toolkit.cli import main
from toolkit.inference.locking import OutputLock
from toolkit.inference.runner import EXIT_INPUTS_FAILED, EXIT_LOCKED, EXIT_OK


@pytest.fixture(scope="module")
def folder_run(bundle_dir, tiny_ckpt, input_tree, tmp_path_factory):
    """One run over the whole tree, with a DICOM SR per study; its exit code and captured stderr."""
    import contextlib
    import io

    inputs, expected = input_tree
    out = tmp_path_factory.mktemp("folder_run")
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(infer_args(bundle_dir, tiny_ckpt, inputs, out, "--dicom-sr"))
    return code, out, expected, err.getvalue()


def test_every_input_gets_exactly_one_row_with_the_right_status(folder_run):
    code, out, expected, log = folder_run
    rows = read_csv(out / "predictions.csv")
    paths = [r["path"] for r in rows]
    assert sorted(paths) == sorted(expected), "one row per input, nothing else (README.txt ignored)"
    assert len(set(paths)) == len(paths)
    got = {r["path"]: r["status"] for r in rows}
    assert got == expected
    assert code == EXIT_INPUTS_FAILED  # some inputs failed
    assert "1 other file(s) and 2 hidden entries (name starting with '.') ignored (no row)" in log
    for row in rows:
        if row["status"] == "error":
            assert row["reason"] and "\n" not in row["reason"], row
            assert row["pred"] == "" and row["prob_glioma"] == ""
        else:
            probs = [float(row[k]) for k in row if k.startswith("prob_")]
            assert len(probs) == 3 and abs(sum(probs) - 1) < 1e-4
            assert row["pred_name"] == ["glioma", "meningioma", "pituitary"][int(row["pred"])]
            assert row["model_name"] and row["model_version"] == "0.1.0"
    assert "error 12" in log and "ok 10" in log


def test_error_reasons_name_the_problem(folder_run):
    _, out, _, _ = folder_run
    reason = {r["path"]: r["reason"].lower() for r in read_csv(out / "predictions.csv")}
    assert "empty" in reason["broken/empty.dcm"] and "empty" in reason["broken/EMPTY0001"]
    assert (
        "truncated" in reason["broken/truncated.dcm"]
        or "less than expected" in reason["broken/truncated.dcm"]
    )
    assert "sr" in reason["broken/report_sr.dcm"] and "not an image" in reason["broken/report_sr.dcm"]
    assert "transfer syntax" in reason["broken/mpeg2.dcm"]
    assert "pixel data" in reason["broken/no_pixels.dcm"]
    assert "nan" in reason["broken/nan.nii.gz"]
    assert "shape" in reason["broken/five_d.nii.gz"]
    assert "multi-frame" in reason["pacs/study2/multiframe/MF0001"]
    assert "not a dicom" in reason["broken/notes.dcm"]
    assert "cannot" in reason["broken/not_png.png"]
    assert not any(str(out.parent) in r for r in reason.values()), (
        "the path is its own column, not in reasons"
    )


def test_dicom_rows_carry_uids_and_jsonl_matches_csv(folder_run):
    _, out, _, _ = folder_run
    rows = read_csv(out / "predictions.csv")
    jsonl = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [j["path"] for j in jsonl] == [r["path"] for r in rows]
    for row, rec in zip(rows, jsonl, strict=True):
        assert rec["status"] == row["status"]
        if row["status"] == "ok":
            assert abs(rec["prob_glioma"] - float(row["prob_glioma"])) < 1e-6
    dicom_ok = [r for r in rows if r["kind"] == "dicom" and r["status"] == "ok"]
    assert len(dicom_ok) == 6
    assert all(r["sop_instance_uid"] and r["series_instance_uid"] and r["modality"] == "CT" for r in dicom_ok)
    assert len({r["series_instance_uid"] for r in dicom_ok}) == 3


def test_no_patient_information_in_logs_or_csv_by_default(folder_run):
    _, out, _, log = folder_run
    assert "PAT-SECRET-42" not in log and "Doe" not in log
    text = (out / "predictions.csv").read_text() + (out / "predictions.jsonl").read_text()
    assert "PAT-SECRET-42" not in text and "Doe^Jane" not in text


def test_patient_columns_only_with_the_flag(bundle_dir, tiny_ckpt, tmp_path, capfd):
    make_dicom(tmp_path / "in" / "IM1", study=9, series="s", index=0)
    code = main(
        infer_args(bundle_dir, tiny_ckpt, tmp_path / "in", tmp_path / "out", "--include-patient-info")
    )
    assert code == EXIT_OK
    (row,) = read_csv(tmp_path / "out" / "predictions.csv")
    assert row["patient_id"] == "PAT-SECRET-42" and row["patient_name"] == "Doe^Jane"
    captured = capfd.readouterr()
    assert "PAT-SECRET-42" not in captured.err + captured.out


def test_dicom_sr_reads_back_and_references_the_classified_instances(folder_run):
    import pydicom

    _, out, _, _ = folder_run
    rows = [r for r in read_csv(out / "predictions.csv") if r["kind"] == "dicom" and r["status"] == "ok"]
    by_study: dict[str, set] = {}
    for r in rows:
        by_study.setdefault(r["study_instance_uid"], set()).add(r["sop_instance_uid"])
    files = sorted((out / "sr").glob("*.dcm"))
    assert {f.stem for f in files} == set(by_study)
    for path in files:
        ds = pydicom.dcmread(path)
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
        assert ds.StudyInstanceUID == path.stem
        evidence = {
            s.ReferencedSOPInstanceUID
            for e in ds.CurrentRequestedProcedureEvidenceSequence
            for series in e.ReferencedSeriesSequence
            for s in series.ReferencedSOPSequence
        }
        assert evidence == by_study[path.stem]
        referenced, findings = set(), []
        _walk(ds.ContentSequence, referenced, findings)
        assert referenced == by_study[path.stem]
        assert len(findings) == len(by_study[path.stem])
        preds = sorted(r["pred_name"] for r in rows if r["study_instance_uid"] == path.stem)
        assert sorted(findings) == preds


def _walk(seq, referenced: set, findings: list) -> None:
    for item in seq:
        if item.ValueType == "IMAGE":
            referenced.update(s.ReferencedSOPInstanceUID for s in item.ReferencedSOPSequence)
        if item.ValueType == "CODE" and item.ConceptNameCodeSequence[0].CodeValue == "121071":  # Finding
            findings.append(item.ConceptCodeSequence[0].CodeMeaning)
        if "ContentSequence" in item:
            _walk(item.ContentSequence, referenced, findings)


def test_multiframe_each_frame_with_flag_and_gradcam(bundle_dir, tiny_ckpt, tmp_path):
    make_dicom(tmp_path / "in" / "MF", study=8, series="mf", index=0, frames=3)
    code = main(
        infer_args(bundle_dir, tiny_ckpt, tmp_path / "in", tmp_path / "out", "--frames", "each", "--gradcam")
    )
    assert code == EXIT_OK
    rows = read_csv(tmp_path / "out" / "predictions.csv")
    assert [(r["path"], r["frame"], r["status"]) for r in rows] == [("MF", str(f), "ok") for f in range(3)]
    from PIL import Image

    for row in rows:
        with Image.open(tmp_path / "out" / row["gradcam"]) as im:
            assert im.mode == "RGB" and im.size == (32, 32)


def test_second_run_on_the_same_output_is_refused(bundle_dir, tiny_ckpt, tmp_path, capfd):
    make_dicom(tmp_path / "in" / "IM1", study=7, series="s", index=0)
    with OutputLock(tmp_path / "out"):
        code = main(infer_args(bundle_dir, tiny_ckpt, tmp_path / "in", tmp_path / "out"))
    assert code == EXIT_LOCKED
    err = capfd.readouterr().err
    assert "another `cit infer` run" in err and f"pid {__import__('os').getpid()}" in err
    assert not (tmp_path / "out" / "predictions.csv").exists()


def test_stale_lock_file_of_a_dead_process_does_not_block(bundle_dir, tiny_ckpt, tmp_path):
    make_dicom(tmp_path / "in" / "IM1", study=7, series="s", index=0)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / ".cit-infer.lock").write_text(
        '{"pid": 999999, "host": "gone", "started": "yesterday"}'
    )
    assert main(infer_args(bundle_dir, tiny_ckpt, tmp_path / "in", tmp_path / "out")) == EXIT_OK
    assert len(read_csv(tmp_path / "out" / "predictions.csv")) == 1
