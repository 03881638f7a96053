"""The small cases of issue 10 (item 9): a journal line that is JSON but not a row, an input folder with no
image (exit 6), and a run that fails before writing anything leaves no folder holding only a lock file."""

from __future__ import annotations

import json
import logging
import os
import shutil

import pytest
import torch
from infer_helpers import infer_args, png_bytes, read_csv

from toolkit.cli import main
from toolkit.inference import locking
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


def test_csv_probabilities_are_the_jsonl_ones(bundle_dir, tiny_ckpt, tmp_path):
    """The CSV keeps every probability to float32 precision (it once rounded to six decimals)."""
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    for k in range(3):
        (inputs / f"{k}.png").write_bytes(png_bytes(k))
    assert main(infer_args(bundle_dir, tiny_ckpt, inputs, out)) == EXIT_OK
    full = {r["path"]: r for r in map(json.loads, (out / "predictions.jsonl").read_text().splitlines())}
    rows = read_csv(out / "predictions.csv")
    probabilities = [c for c in rows[0] if c.startswith("prob_")]
    assert probabilities and len(rows) == 3
    for row in rows:
        for column in probabilities:
            assert float(row[column]) == pytest.approx(full[row["path"]][column], rel=1e-7, abs=0)


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
    os.mkfifo(tmp_path / "fifo")  # a FIFO is not a folder to walk (and reading it would block)
    assert main(infer_args(bundle_dir, tiny_ckpt, tmp_path / "fifo", out)) == EXIT_RUN_FAILED
    assert "is neither a folder nor a file (a FIFO" in capsys.readouterr().err
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


def test_lock_file_goes_with_the_run_and_results_stay(tmp_path):
    out = tmp_path / "out"
    with OutputLock(out):
        (out / "predictions.csv").write_text("path\n")
    assert not (out / LOCK_NAME).exists() and (out / "predictions.csv").exists()
    with OutputLock(tmp_path / "new" / "out"):
        pass
    assert not (tmp_path / "new").exists()


def test_a_lock_file_replaced_before_it_is_locked_is_locked_anew(tmp_path, monkeypatch):
    """The run before us may remove the file between our open and our flock: we must not lock a file
    that no longer has the name, or two runs would each hold one."""
    out = tmp_path / "out"
    out.mkdir()
    real_flock, replaced = locking.fcntl.flock, []

    def flock_after_a_swap(fd, op):
        if not replaced and op & locking.fcntl.LOCK_EX:
            replaced.append(True)
            (out / LOCK_NAME).unlink()  # what the previous holder's release does
        return real_flock(fd, op)

    monkeypatch.setattr(locking.fcntl, "flock", flock_after_a_swap)
    lock = OutputLock(out).acquire()
    try:
        assert replaced and locking._same_file(lock.fd, out / LOCK_NAME), "the lock is on the file now named"
    finally:
        lock.release()


def test_links_in_the_output_folder_are_never_written_through(bundle_dir, tiny_ckpt, tmp_path, capsys):
    inputs, out, elsewhere = tmp_path / "in", tmp_path / "out", tmp_path / "elsewhere"
    inputs.mkdir()
    (inputs / "a.png").write_bytes(png_bytes(1))
    elsewhere.mkdir()
    victim = elsewhere / "important.txt"
    victim.write_text("keep me")
    out.mkdir()
    (out / LOCK_NAME).symlink_to(victim)
    assert main(infer_args(bundle_dir, tiny_ckpt, inputs, out)) == EXIT_RUN_FAILED
    assert "is a symbolic link" in capsys.readouterr().err and victim.read_text() == "keep me"
    (out / LOCK_NAME).unlink()
    (out / "parts").symlink_to(elsewhere, target_is_directory=True)
    assert main(infer_args(bundle_dir, tiny_ckpt, inputs, out)) == EXIT_RUN_FAILED
    assert "parts is a symbolic link" in capsys.readouterr().err
    assert sorted(p.name for p in elsewhere.iterdir()) == ["important.txt"], (
        "nothing written through the link"
    )
    (out / "parts").unlink()
    (out / "sr").mkdir()
    (out / "sr" / "1.2.3.dcm").symlink_to(victim)
    assert main(infer_args(bundle_dir, tiny_ckpt, inputs, out)) == EXIT_RUN_FAILED
    assert "1.2.3.dcm is a symbolic link" in capsys.readouterr().err and victim.read_text() == "keep me"
    (out / "sr" / "1.2.3.dcm").unlink()
    assert main(infer_args(bundle_dir, tiny_ckpt, inputs, out)) == EXIT_OK
    assert not (out / LOCK_NAME).exists(), "the lock file goes away with the run"


def test_names_that_display_alike_keep_their_own_rows_and_resume_keys(
    bundle_dir, tiny_ckpt, tmp_path, capsys
):
    """A newline in a name is shown escaped ("new\\nline"), which is also how a literal backslash-n
    name reads: the two files must still be two inputs, each written once and resumed once."""
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    newline, literal = inputs / "new\nline.png", inputs / "new\\nline.png"
    newline.write_bytes(png_bytes(1))
    literal.write_bytes(png_bytes(2))
    assert newline.stat().st_size == literal.stat().st_size
    os.utime(literal, ns=(newline.stat().st_atime_ns, newline.stat().st_mtime_ns))
    assert main(infer_args(bundle_dir, tiny_ckpt, inputs, out)) == EXIT_OK
    rows = read_csv(out / "predictions.csv")
    assert [r["path"] for r in rows] == ["new\\nline.png", "new\\nline.png"]
    probs = [[v for k, v in r.items() if k.startswith("prob_")] for r in rows]
    assert probs[0] != probs[1], "two different images, two different results"
    assert len(read_journals([part_path(out, 0)])) == 2
    capsys.readouterr()
    assert main(infer_args(bundle_dir, tiny_ckpt, inputs, out)) == EXIT_OK
    assert "(0 processed now, 2 done by an earlier run)" in capsys.readouterr().err


def test_a_weights_file_carrying_code_is_refused_in_one_line(bundle_dir, tiny_ckpt, tmp_path, capsys):
    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    hostile = tmp_path / "model.pt"
    torch.save({"state": Payload()}, hostile)
    shutil.copy(tiny_ckpt.parent / "model_info.json", tmp_path / "model_info.json")
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "a.png").write_bytes(png_bytes(1))
    assert main(infer_args(bundle_dir, hostile, inputs, tmp_path / "out")) == EXIT_RUN_FAILED
    err = capsys.readouterr().err
    assert not (tmp_path / "pwned").exists(), "the payload ran"
    assert "holds pickled objects or code, which is never loaded" in err
    assert len(err.strip().splitlines()) == 1 and "weights_only=False" not in err
