"""Benchmark of the read limits (issue 26, item 1): `cit infer` over resource bombs costs about what it
costs over one good image.

Runs `cit infer --workers 0` (bundles/resnet18_brain_ct, random weights for 32 px inputs) twice, each in
its own process: (a) on one good PNG, (b) on a folder holding that PNG and one bomb of each kind
(tests/inference/resource_bombs.py: a deflated DICOM inflating to 800 MB, JPEG-LS and JPEG 2000 DICOMs
declaring 20000 x 20000, a 1024 x 1024 x 512 .nii.gz, 13000 x 13000 PNG and RLE BMP, a 1 x 170M PNG,
a sparse 200 MB .dcm, a truncated and a corrupt JPEG). It polls /proc every 10 ms for the summed RSS of
the process tree and prints JSON: each run's peak RSS, wall time and row statuses, and the ratios (b)/(a)
(target: peak RSS ratio under 1.5).

    python scripts/bench_resource_limits.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "inference"))  # the bomb writers and the tiny checkpoint

from infer_helpers import BUNDLE, infer_args, png_bytes, read_csv, subprocess_env, write_tiny_checkpoint  # noqa: E402
from resource_bombs import MiB, write_bombs  # noqa: E402


def _children(pid: int) -> list[int]:
    found = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                found += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return found


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def tree_rss(pid: int) -> int:
    """Summed resident memory of ``pid`` and all its descendants."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += _rss(p)
        todo += _children(p)
    return total


def run(inputs: Path, output: Path, ckpt: Path) -> dict:
    cmd = [sys.executable, "-m", "toolkit", *infer_args(BUNDLE, ckpt, inputs, output)]
    started = time.monotonic()
    proc = subprocess.Popen(cmd, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, tree_rss(proc.pid))
        time.sleep(0.01)
    wall = time.monotonic() - started
    stderr = proc.stderr.read().decode(errors="replace")
    rows = read_csv(output / "predictions.csv") if (output / "predictions.csv").exists() else []
    return {
        "exit_code": proc.returncode,
        "peak_rss_mib": round(peak / MiB, 1),
        "wall_s": round(wall, 2),
        "rows": {r["path"]: r["status"] for r in rows},
        "reasons": {r["path"]: r["reason"][:160] for r in rows if r["status"] != "ok"},
        **({"stderr_tail": stderr[-1500:]} if proc.returncode not in (0, 3) else {}),
    }


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench_limits_") as tmp:
        tmp = Path(tmp)
        ckpt = write_tiny_checkpoint(BUNDLE, tmp / "ckpt")
        good, bombs = tmp / "good", tmp / "bombs"
        good.mkdir()
        (good / "good.png").write_bytes(png_bytes(0))
        write_bombs(bombs, deflated=800 * MiB)
        (bombs / "good.png").write_bytes(png_bytes(0))
        files = {p.name: p.stat().st_size for p in sorted(bombs.iterdir())}
        a = run(good, tmp / "out_good", ckpt)
        b = run(bombs, tmp / "out_bombs", ckpt)
        result = {
            "input_bytes": files,
            "good_only": a,
            "bombs_and_good": b,
            "ratio_peak_rss": round(b["peak_rss_mib"] / a["peak_rss_mib"], 3),
            "ratio_wall": round(b["wall_s"] / a["wall_s"], 3),
            "target_ratio_peak_rss": 1.5,
        }
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
