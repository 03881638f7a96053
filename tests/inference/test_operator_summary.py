"""What an operator gets from every `cit infer` run: ``summary.json`` matching the rows written, a short
summary on stderr, the exit code of README's table, and no patient data in either (issue 23, item 5)."""

from __future__ import annotations

import json
import subprocess
from collections import Counter

from infer_helpers import PYTHON, infer_args, make_dicom, png_bytes, read_csv, subprocess_env

from toolkit.cli import main
from toolkit.inference.operator_summary import SUMMARY_NAME
from toolkit.inference.runner import EXIT_INPUTS_FAILED, EXIT_OK

PATIENT = ("Smith^Johanna", "MRN-77123-X")  # in a DICOM header and in a folder name


def _tree(root):
    """A study folder named after its patient (as exports often are), a broken file, a good PNG."""
    study = root / f"{PATIENT[0].replace('^', '_')}_{PATIENT[1]}"
    study.mkdir(parents=True)
    make_dicom(
        study / "1.dcm", study="1", series="1", index=1, patient_name=PATIENT[0], patient_id=PATIENT[1]
    )
    (study / "scan.png").write_bytes(png_bytes(1))
    (study / "cut.png").write_bytes(png_bytes(2)[:60])  # a truncated copy: an error row


def _logged_and_recorded(capsys, out) -> tuple[str, dict]:
    return capsys.readouterr().err, json.loads((out / SUMMARY_NAME).read_text())


def test_summary_json_matches_the_rows_and_no_patient_data_is_logged(bundle_dir, tiny_ckpt, tmp_path, capsys):
    inputs, out = tmp_path / "in", tmp_path / "out"
    _tree(inputs)
    assert main(infer_args(bundle_dir, tiny_ckpt, inputs, out, "--dicom-sr")) == EXIT_INPUTS_FAILED
    log, summary = _logged_and_recorded(capsys, out)
    rows = read_csv(out / "predictions.csv")
    assert summary["rows"] == dict(Counter(r["status"] for r in rows)) == {"ok": 2, "error": 1}
    assert summary["mode"] == "folder" and summary["exit_code"] == EXIT_INPUTS_FAILED
    assert summary["inputs"] == 3 and summary["processed_now"] == 3 and summary["done_earlier"] == 0
    assert summary["inputs_per_second"] > 0 and summary["seconds"] >= 0
    assert summary["backend"] and summary["precision"] and summary["started"] <= summary["finished"]
    assert "3 inputs: error 1, ok 2 (3 processed now, 0 done by an earlier run) in" in log, log
    for secret in (*PATIENT, "Johanna", "77123", "scan.png", "cut.png"):
        assert secret not in log, f"{secret!r} in the log:\n{log}"
        assert secret not in json.dumps(summary)

    # a rerun: nothing new, every row done earlier; the figures are rewritten for this run
    assert main(infer_args(bundle_dir, tiny_ckpt, inputs, out, "--dicom-sr")) == EXIT_INPUTS_FAILED
    log, summary = _logged_and_recorded(capsys, out)
    assert summary["processed_now"] == 0 and summary["done_earlier"] == 3
    assert summary["inputs_per_second"] is None and summary["rows"] == {"ok": 2, "error": 1}


def test_a_clean_run_records_exit_code_zero(bundle_dir, tiny_ckpt, tmp_path, capsys):
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    (inputs / "a.png").write_bytes(png_bytes(3))
    assert main(infer_args(bundle_dir, tiny_ckpt, inputs, out)) == EXIT_OK
    _, summary = _logged_and_recorded(capsys, out)
    assert summary["exit_code"] == EXIT_OK and summary["rows"] == {"ok": 1}


def test_the_log_of_a_plain_run_has_no_info_lines(bundle_dir, tiny_ckpt, tmp_path):
    """As a scheduler runs it (a fresh process): without --verbose only warnings and the summary, so no
    library logs a line per input (dicomweb-client logs each request's UIDs at INFO)."""
    inputs, out = tmp_path / "in", tmp_path / "out"
    _tree(inputs)
    args = infer_args(bundle_dir, tiny_ckpt, inputs, out)
    result = subprocess.run(
        [PYTHON, "-m", "toolkit", *args], env=subprocess_env(), capture_output=True, text=True
    )
    assert result.returncode == EXIT_INPUTS_FAILED, result.stderr[-2000:]
    assert not [line for line in result.stderr.splitlines() if line.startswith(("INFO", "DEBUG"))], (
        result.stderr
    )
    verbose = subprocess.run(
        [PYTHON, "-m", "toolkit", *args, "--verbose", "--restart"],
        env=subprocess_env(),
        capture_output=True,
        text=True,
    )
    assert any(line.startswith("INFO") for line in verbose.stderr.splitlines()), verbose.stderr
