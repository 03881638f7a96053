"""What a `cit infer` run says about patients (issue 10, item 8): with --pseudonymise-paths no folder or file
name and no absolute path reaches any output; --sr-anonymise keeps patient attributes out of the SR, which
by default carries them."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import io
import os
import re
import stat

import pydicom
import pytest
from infer_helpers import every_output_text, infer_args, make_dicom, png_bytes, read_csv, write_input_tree

from toolkit.cli import main
from toolkit.inference.privacy import KEY_NAME, Pseudonymiser
from toolkit.inference.runner import EXIT_INPUTS_FAILED, EXIT_OK, EXIT_USAGE

SECRETS = ("DOE_JOHN", "MRN123456", "Doe^John", "PAT-SECRET-42", "Doe^Jane", "ACC-77-SECRET", "19700101")


def _tree(root):
    """Patient-named folders and files, some broken, a link loop and a dangling link (absolute paths in errors)."""
    make_dicom(
        root / "DOE_JOHN_MRN123456" / "scan0.dcm",
        study=1,
        series="a",
        index=0,
        patient_name="Doe^John",
        patient_id="MRN123456",
        accession="ACC-77-SECRET",
    )
    make_dicom(
        root / "DOE_JOHN_MRN123456" / "scan1.dcm",
        study=1,
        series="a",
        index=1,
        patient_name="Doe^John",
        patient_id="MRN123456",
        accession="ACC-77-SECRET",
        frames=2,
    )
    (root / "DOE_JOHN_MRN123456" / "photo_DOE_JOHN.png").write_bytes(png_bytes(1))
    (root / "DOE_JOHN_MRN123456" / "broken_MRN123456.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    os.symlink(
        root / "DOE_JOHN_MRN123456" / "gone.dcm", root / "DOE_JOHN_MRN123456" / "dangling_MRN123456.dcm"
    )
    os.symlink("loop_DOE.dcm", root / "DOE_JOHN_MRN123456" / "loop_DOE.dcm")
    write_input_tree(root / "more_MRN123456")  # every kind of broken input, patient Doe^Jane


@pytest.fixture(scope="module")
def private_run(bundle_dir, tiny_ckpt, tmp_path_factory):
    base = tmp_path_factory.mktemp("private")
    inputs, out = base / "in", base / "out"
    _tree(inputs)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(
            infer_args(
                bundle_dir,
                tiny_ckpt,
                inputs,
                out,
                "--pseudonymise-paths",
                "--gradcam",
                "--dicom-sr",
                "--sr-anonymise",
            )
        )
    return code, base, inputs, out, err.getvalue()


def test_no_path_or_patient_data_in_any_output_file_or_log(private_run):
    code, base, _, out, log = private_run
    assert code == EXIT_INPUTS_FAILED
    text = every_output_text(out)  # names and contents of every file: CSV, JSONL, journals, run.json, PNG, SR
    assert str(base) not in text and "/tmp/" not in text
    for secret in SECRETS:
        assert secret not in text, secret
    for secret in (*SECRETS, str(base / "in")):
        assert secret not in log, secret
    rows = read_csv(out / "predictions.csv")
    assert rows and all(r["path"].startswith("p-") and len(r["path"]) == 22 for r in rows)
    assert {r["status"] for r in rows} == {"ok", "error"}
    overlays = [r["gradcam"] for r in rows if r["status"] == "ok" and r["kind"] != "nifti"]
    assert overlays and all(re.fullmatch(r"gradcam/[0-9a-f]{16}(_frame\d+)?\.png", o) for o in overlays), (
        overlays
    )


def test_pseudonyms_are_a_keyed_hash_of_the_relative_path_with_the_key_beside_the_outputs(private_run):
    _, _, inputs, out, _ = private_run
    key_file = out / KEY_NAME
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = bytes.fromhex(key_file.read_text().strip())
    expected = "p-" + hmac.new(key, b"DOE_JOHN_MRN123456/scan0.dcm", hashlib.sha256).hexdigest()[:20]
    paths = {r["path"] for r in read_csv(out / "predictions.csv")}
    assert expected in paths
    table = Pseudonymiser.for_output(out).table(
        ["DOE_JOHN_MRN123456/scan0.dcm", "DOE_JOHN_MRN123456/loop_DOE.dcm"]
    )
    assert set(table) <= paths  # the key holder maps pseudonyms back


def test_anonymised_sr_holds_no_patient_or_study_attribute(private_run):
    _, _, _, out, _ = private_run
    reports = sorted((out / "sr").glob("*.dcm"))
    assert reports
    for path in reports:
        ds = pydicom.dcmread(path)
        for keyword in ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "StudyDate"):
            assert not ds.get(keyword), keyword
        assert ds.StudyInstanceUID  # still filed with its study


def test_by_default_the_sr_carries_the_patient_and_study_attributes(bundle_dir, tiny_ckpt, tmp_path):
    make_dicom(
        tmp_path / "in" / "IM1",
        study=1,
        series="a",
        index=0,
        patient_name="Doe^John",
        patient_id="MRN123456",
        accession="ACC-77-SECRET",
    )
    assert main(infer_args(bundle_dir, tiny_ckpt, tmp_path / "in", tmp_path / "out", "--dicom-sr")) == EXIT_OK
    (report,) = (tmp_path / "out" / "sr").glob("*.dcm")
    ds = pydicom.dcmread(report)
    assert (ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.AccessionNumber) == (
        "Doe^John",
        "MRN123456",
        "19700101",
        "ACC-77-SECRET",
    )


def test_pseudonymised_paths_and_patient_columns_contradict(bundle_dir, tiny_ckpt, tmp_path, capsys):
    make_dicom(tmp_path / "in" / "IM1", study=1, series="a", index=0)
    code = main(
        infer_args(
            bundle_dir,
            tiny_ckpt,
            tmp_path / "in",
            tmp_path / "out",
            "--pseudonymise-paths",
            "--include-patient-info",
        )
    )
    assert code == EXIT_USAGE
    assert "contradict" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_reasons_use_no_absolute_path_without_pseudonymisation(bundle_dir, tiny_ckpt, tmp_path):
    _tree(tmp_path / "in")
    assert main(infer_args(bundle_dir, tiny_ckpt, tmp_path / "in", tmp_path / "out")) == EXIT_INPUTS_FAILED
    rows = read_csv(tmp_path / "out" / "predictions.csv")
    assert any(r["path"] == "DOE_JOHN_MRN123456/scan0.dcm" for r in rows)  # relative paths, in their column
    for row in rows:
        assert str(tmp_path) not in row["reason"] and "/tmp/" not in row["reason"], row
