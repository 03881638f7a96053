"""`torchrun --nproc_per_node 2 -m toolkit infer` (gloo on CPU): shards merged with no duplicates or gaps."""

from __future__ import annotations

import subprocess

import pytest
from infer_helpers import PYTHON, infer_args, read_csv, subprocess_env

from toolkit.cli import main
from toolkit.inference.runner import EXIT_INPUTS_FAILED
from toolkit.inference.writers import part_path


@pytest.mark.slow
def test_two_processes_shard_and_merge(bundle_dir, tiny_ckpt, input_tree, tmp_path):
    inputs, expected = input_tree
    out = tmp_path / "dist"
    cmd = [
        PYTHON,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "toolkit",
        *infer_args(bundle_dir, tiny_ckpt, inputs, out),
    ]
    result = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    # torchrun turns the ranks' exit code 3 (some inputs failed) into its own failure report
    assert result.returncode != 0 and "exitcode  : 3" in result.stderr, result.stderr[-3000:]

    # ... both ranks wrote a part, each input is in exactly one part
    part_keys = []
    for rank in (0, 1):
        lines = part_path(out, rank).read_text().splitlines()
        assert lines, f"rank {rank} wrote nothing"
        part_keys += [__import__("json").loads(line)["key"] for line in lines]
    assert len(part_keys) == len(set(part_keys)) == len(expected)

    rows = read_csv(out / "predictions.csv")
    assert sorted(r["path"] for r in rows) == sorted(expected)
    assert {r["path"]: r["status"] for r in rows} == expected

    # the merged CSV equals a single-process run's
    assert main(infer_args(bundle_dir, tiny_ckpt, inputs, tmp_path / "single")) == EXIT_INPUTS_FAILED
    assert (out / "predictions.csv").read_text() == (tmp_path / "single" / "predictions.csv").read_text()
