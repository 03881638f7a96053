"""`cit infer --retry-errors`: a rerun processes the inputs whose rows are errors again; without the
flag a rerun keeps them (the journal already has a final row for them)."""

from __future__ import annotations

import io
import os

import numpy as np
from infer_helpers import infer_args, read_csv
from PIL import Image

from toolkit.cli import main
from toolkit.inference.runner import EXIT_INPUTS_FAILED, EXIT_OK

MTIME_NS = 1_700_000_000_000_000_000


def _png(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (40, 40), dtype=np.uint8)).save(
        buffer, "PNG"
    )
    return buffer.getvalue()


def _write(path, data: bytes) -> None:
    path.write_bytes(data)
    os.utime(path, ns=(MTIME_NS, MTIME_NS))


def test_retry_errors_processes_error_rows_again(bundle_dir, tiny_ckpt, tmp_path, capsys):
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    (inputs / "early.png").write_bytes(_png(0))
    late = inputs / "late.png"
    good = _png(1)
    # a file still being copied when the first run read it: the PNG signature, then zeros; same size and
    # time stamp as the finished file, so the rerun sees the same input (the resume key is path, size, mtime)
    _write(late, b"\x89PNG\r\n\x1a\n" + bytes(len(good) - 8))

    assert main(infer_args(bundle_dir, tiny_ckpt, inputs, out)) == EXIT_INPUTS_FAILED
    rows = {r["path"]: r for r in read_csv(out / "predictions.csv")}
    assert rows["late.png"]["status"] == "error" and rows["late.png"]["reason"]
    assert rows["early.png"]["status"] == "ok"
    _write(late, good)  # the copy has finished

    capsys.readouterr()
    assert main(infer_args(bundle_dir, tiny_ckpt, inputs, out)) == EXIT_INPUTS_FAILED
    assert "0 processed now, 2 done by an earlier run" in capsys.readouterr().err
    assert {r["path"]: r["status"] for r in read_csv(out / "predictions.csv")} == {
        "early.png": "ok",
        "late.png": "error",
    }

    assert main(infer_args(bundle_dir, tiny_ckpt, inputs, out, "--retry-errors")) == EXIT_OK
    assert "1 processed now, 1 done by an earlier run" in capsys.readouterr().err
    rows = {r["path"]: r for r in read_csv(out / "predictions.csv")}
    assert len(rows) == 2 and rows["late.png"]["status"] == "ok" and rows["late.png"]["reason"] == ""
    assert abs(sum(float(rows["late.png"][k]) for k in rows["late.png"] if k.startswith("prob_")) - 1) < 1e-4

    # with nothing left in error, --retry-errors has nothing to do
    assert main(infer_args(bundle_dir, tiny_ckpt, inputs, out, "--retry-errors")) == EXIT_OK
    assert "0 processed now, 2 done by an earlier run" in capsys.readouterr().err
