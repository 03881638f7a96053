"""A rerun on an output folder resumes only the run that made it (issue 10, item 4): the journal rows carry a
fingerprint of the model, config and row-changing options; another one is refused in one line (exit 5)
unless --restart discards the old results. Every row names the weights by their SHA-256."""

from __future__ import annotations

import hashlib
import json

import pytest
from infer_helpers import infer_args, png_bytes, read_csv, write_tiny_checkpoint

from toolkit.cli import main
from toolkit.inference.runner import EXIT_OK, EXIT_RESUME_REFUSED
from toolkit.inference.writers import part_path


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def killed_run(bundle_dir, tiny_ckpt, tmp_path):
    """A run of ``tiny_ckpt`` over 6 PNGs whose journal holds only 4 rows and no final files: what a run
    killed after 4 rows leaves (the kill itself is test_infer_resume's)."""
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    for k in range(6):
        (inputs / f"{k}.png").write_bytes(png_bytes(k))
    assert main(infer_args(bundle_dir, tiny_ckpt, inputs, out)) == EXIT_OK
    journal = part_path(out, 0)
    journal.write_text("".join(journal.read_text().splitlines(keepends=True)[:4]))
    for name in ("predictions.csv", "predictions.jsonl"):
        (out / name).unlink()
    return inputs, out


def test_resume_with_other_weights_is_refused_then_restart_starts_afresh(
    bundle_dir, tiny_ckpt, killed_run, tmp_path, capsys
):
    inputs, out = killed_run
    other = write_tiny_checkpoint(bundle_dir, tmp_path / "other", seed=7)
    journal_before = part_path(out, 0).read_bytes()
    capsys.readouterr()

    assert main(infer_args(bundle_dir, other, inputs, out)) == EXIT_RESUME_REFUSED
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "another model or other options" in err and "--restart" in err
    assert f"weights sha256 {_sha256(tiny_ckpt)[:8]} -> {_sha256(other)[:8]}" in err
    assert "filters" not in err, "the options did not change: run.json's lists equal this run's values"
    assert part_path(out, 0).read_bytes() == journal_before, "a refused run writes nothing"
    assert not (out / "predictions.csv").exists()

    assert main(infer_args(bundle_dir, other, inputs, out, "--restart")) == EXIT_OK
    assert "6 processed now, 0 done by an earlier run" in capsys.readouterr().err
    rows = read_csv(out / "predictions.csv")
    assert len(rows) == 6 and {r["model_sha256"] for r in rows} == {_sha256(other)}
    run = json.loads((out / "run.json").read_text())
    assert run["weights_sha256"] == _sha256(other) and run["weights_file"] == "model.pt"

    # the same model again resumes (nothing left to do)
    assert main(infer_args(bundle_dir, other, inputs, out)) == EXIT_OK
    assert "0 processed now, 6 done by an earlier run" in capsys.readouterr().err


def test_resume_with_the_same_model_finishes_with_one_model_column(bundle_dir, tiny_ckpt, killed_run, capsys):
    inputs, out = killed_run
    capsys.readouterr()
    assert main(infer_args(bundle_dir, tiny_ckpt, inputs, out)) == EXIT_OK
    assert "2 processed now, 4 done by an earlier run" in capsys.readouterr().err
    assert {r["model_sha256"] for r in read_csv(out / "predictions.csv")} == {_sha256(tiny_ckpt)}


@pytest.mark.parametrize(
    "extra", [["--frames", "each"], ["--gradcam"], ["--pseudonymise-paths"], ["--set", "temperature=2.0"]]
)
def test_resume_with_options_that_change_rows_is_refused(bundle_dir, tiny_ckpt, killed_run, capsys, extra):
    inputs, out = killed_run
    capsys.readouterr()
    assert main(infer_args(bundle_dir, tiny_ckpt, inputs, out, *extra)) == EXIT_RESUME_REFUSED
    err = capsys.readouterr().err
    assert "refusing to mix them" in err


def test_resume_of_a_journal_without_fingerprint_is_refused(bundle_dir, tiny_ckpt, killed_run, capsys):
    """Journals of an older version (no fingerprint in their rows) cannot be checked: refused."""
    inputs, out = killed_run
    journal = part_path(out, 0)
    rows = [json.loads(line) for line in journal.read_text().splitlines()]
    journal.write_text(
        "".join(json.dumps({k: v for k, v in r.items() if k != "fingerprint"}) + "\n" for r in rows)
    )
    (out / "run.json").unlink()
    capsys.readouterr()
    assert main(infer_args(bundle_dir, tiny_ckpt, inputs, out)) == EXIT_RESUME_REFUSED
    assert "--restart" in capsys.readouterr().err
