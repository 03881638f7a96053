"""A `cit infer` run killed with SIGKILL mid-run, then rerun, gives the uninterrupted run's CSV."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest
from infer_helpers import PYTHON, infer_args, read_csv, subprocess_env, write_input_tree

from toolkit.cli import main
from toolkit.inference.runner import EXIT_INPUTS_FAILED
from toolkit.inference.writers import part_path


def _journal_lines(out) -> int:
    path = part_path(out, 0)
    return path.read_bytes().count(b"\n") if path.exists() else 0


@pytest.mark.slow
def test_sigkill_mid_run_then_rerun_equals_uninterrupted_run(bundle_dir, tiny_ckpt, tmp_path, capsys):
    inputs = tmp_path / "in"
    expected = write_input_tree(inputs, n_extra_png=30)
    n_inputs = len(expected)
    decided_at_discovery = (
        6  # rows journalled before the first model batch (empty x2, garbage, text, SR, multi-frame)
    )

    # reference: one uninterrupted run (in-process)
    assert main(infer_args(bundle_dir, tiny_ckpt, inputs, tmp_path / "ref")) == EXIT_INPUTS_FAILED
    reference = (tmp_path / "ref" / "predictions.csv").read_text()

    # killed run: SIGKILL as soon as two model batches are journalled, with a loader worker running
    out = tmp_path / "out"
    cmd = [PYTHON, "-m", "toolkit", *infer_args(bundle_dir, tiny_ckpt, inputs, out)]
    cmd[cmd.index("--workers") + 1] = "1"
    proc = subprocess.Popen(cmd, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while (
        _journal_lines(out) < decided_at_discovery + 4 and proc.poll() is None and time.monotonic() < deadline
    ):
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    done_when_killed = _journal_lines(out)
    assert decided_at_discovery + 4 <= done_when_killed < n_inputs, "the kill must land mid-run"
    assert not (out / "predictions.csv").exists(), "final files only appear when a run completes"

    # rerun the same command (in-process: the CLI code path without another interpreter start-up)
    capsys.readouterr()
    assert main(infer_args(bundle_dir, tiny_ckpt, inputs, out)) == EXIT_INPUTS_FAILED
    log = capsys.readouterr().err
    assert f"{n_inputs - done_when_killed} processed now, {done_when_killed} done by an earlier run" in log
    assert (out / "predictions.csv").read_text() == reference
    rows = read_csv(out / "predictions.csv")
    assert sorted(r["path"] for r in rows) == sorted(expected)

    # a third run has nothing left to do and rewrites the same result
    assert main(infer_args(bundle_dir, tiny_ckpt, inputs, out)) == EXIT_INPUTS_FAILED
    assert f"0 processed now, {n_inputs} done by an earlier run" in capsys.readouterr().err
    assert (out / "predictions.csv").read_text() == reference
