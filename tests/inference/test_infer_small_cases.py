"""The small cases of issue 10 (item 9): a journal line that is JSON but not a row, an input folder with no
image (exit 6), and a run that fails before writing anything leaves no folder holding only a lock file."""

from __future__ import annotations

import logging

from infer_helpers import infer_args, png_bytes, read_csv

from toolkit.cli import main
from toolkit.inference.locking import LOCK_NAME, OutputLock
from toolkit.inference.runner import EXIT_NO_INPUTS, EXIT_OK, EXIT_RUN_FAILED
from toolkit.inference.writers import part_path, read_journals


def test_journal_lines_that_are_not_rows_are_skipped_with_a_warning(
    bundle_dir, tiny_ckpt, tmp_path, caplog, capsys
):
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    for k in range(3):
        (inputs / f"{k}.png").write_bytes(png_bytes(k))
    assert main(infer_args(bundle_dir, tiny_ckpt, inputs, out)) == EXIT_OK
    reference = (out / "predictions.csv").read_text()
    journal = part_path(out, 0)
    lines = journal.read_text().splitlines(keepends=True)
    # `{}`, other JSON values and a row without its key, between real rows; the last row is lost
    journal.write_text("{}\n" + lines[0] + "[]\n5\nnull\n" + lines[1] + '{"status": "ok"}\n')
    capsys.readouterr()
    with caplog.at_level(logging.WARNING, logger="toolkit.inference"):
        assert main(infer_args(bundle_dir, tiny_ckpt, inputs, out)) == EXIT_OK
    assert "1 processed now, 2 done by an earlier run" in capsys.readouterr().err
    assert "skipped 5 line(s) of parts/predictions.part0.jsonl that are not result rows" in caplog.text
    assert (out / "predictions.csv").read_text() == reference


def test_read_journals_ignores_values_that_are_not_rows(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{}\n{"key": 3, "status": "ok"}\n{"key": "a", "status": "ok"}\n"text"\n')
    assert list(read_journals([path])) == ["a"]


def test_an_empty_or_imageless_input_folder_has_its_own_exit_code(bundle_dir, tiny_ckpt, tmp_path, capsys):
    empty = tmp_path / "share"
    empty.mkdir()
    out = tmp_path / "out"
    assert main(infer_args(bundle_dir, tiny_ckpt, empty, out)) == EXIT_NO_INPUTS
    err = capsys.readouterr().err
    assert "no input found" in err and "mounted" in err
    assert not out.exists(), "nothing written, not even the lock file"
    (empty / "notes.txt").write_text("x")
    (empty / "sub").mkdir()
    (empty / "sub" / "list.csv").write_text("a,b\n")
    assert main(infer_args(bundle_dir, tiny_ckpt, empty, out)) == EXIT_NO_INPUTS
    assert "2 other file(s) ignored" in capsys.readouterr().err
    assert not out.exists()


def test_an_empty_input_does_not_replace_earlier_results(bundle_dir, tiny_ckpt, tmp_path):
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    (inputs / "a.png").write_bytes(png_bytes(1))
    assert main(infer_args(bundle_dir, tiny_ckpt, inputs, out)) == EXIT_OK
    (inputs / "a.png").unlink()  # e.g. the share is not mounted on the rerun
    assert main(infer_args(bundle_dir, tiny_ckpt, inputs, out)) == EXIT_NO_INPUTS
    assert [r["path"] for r in read_csv(out / "predictions.csv")] == ["a.png"]


def test_missing_input_or_bundle_leaves_no_lock_only_folder(bundle_dir, tiny_ckpt, tmp_path, capsys):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(png_bytes(1))
    out = tmp_path / "results" / "run1"
    assert main(infer_args(bundle_dir, tiny_ckpt, tmp_path / "missing", out)) == EXIT_RUN_FAILED
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "results").exists()
    assert main(infer_args(tmp_path / "no_bundle", tiny_ckpt, tmp_path / "in", out)) == EXIT_RUN_FAILED
    assert "is not a bundle" in capsys.readouterr().err
    assert not (tmp_path / "results").exists(), "the folders the run created are gone with the lock file"
    assert main(infer_args(bundle_dir, tmp_path / "no_model.pt", tmp_path / "in", out)) == EXIT_RUN_FAILED
    assert "model weights not found" in capsys.readouterr().err
    assert not (tmp_path / "results").exists()
    # an output folder that existed before is kept (empty), only the lock file goes
    out.mkdir(parents=True)
    assert main(infer_args(tmp_path / "no_bundle", tiny_ckpt, tmp_path / "in", out)) == EXIT_RUN_FAILED
    assert out.is_dir() and not list(out.iterdir())


def test_lock_release_keeps_a_folder_with_results(tmp_path):
    out = tmp_path / "out"
    with OutputLock(out):
        (out / "predictions.csv").write_text("path\n")
    assert (out / LOCK_NAME).exists() and (out / "predictions.csv").exists()
    with OutputLock(tmp_path / "new" / "out"):
        pass
    assert not (tmp_path / "new").exists()
