"""int8 or bf16 against fp32 on a trained model's test split, through `cit infer` as a hospital runs it
(issue 29).

For one trained bundle run (its ``--ckpt-dir`` with ``model.pt`` and its training ``--output-dir`` with the
saved split), this script

  1. ``--candidate int8`` (default): runs ``cit export --format onnx --int8`` (the fp32 ONNX export, then
     ONNX Runtime static quantization calibrated on the training split, and the export's own accuracy
     guard on the validation split); ``--candidate bf16``: ``cit export --format bf16-check`` (the same
     guard for the PyTorch model under bf16 autocast);
  2. runs ``cit infer`` over the folder of the test split's images twice: ``--backend onnxruntime`` and
     ``--backend onnxruntime-int8`` (``--candidate bf16``: ``--backend pytorch`` with ``--precision fp32``
     and ``bf16``, on a CPU with native bf16);
  3. scores both on the test split's labels with the project's comparison (``toolkit.evaluation.compare``:
     95 % bootstrap CIs by patient where the split has patient ids, the paired candidate - fp32
     difference, McNemar / DeLong), adds top-1 agreement (multi-label: each finding's decision at the
     model's stored thresholds) and the largest probability difference, and prints JSON.

The test split chooses nothing here: the int8 model is the one the export made and guarded on validation.
When the guard refuses it, the script prints the refusal and exits 1; ``--max-auroc-drop`` /
``--min-agreement`` loosen the guard (the JSON then says so) to measure a refused model all the same.
Multi-label: the findings with fewer than ``--min-positives`` positive or negative test images are left
out of the scores (their AUROC is undefined in too many resamples) and named in the JSON.

    python scripts/precision_accuracy.py --bundle bundles/resnet_d_covid_cxr \\
        --ckpt-dir runs/results/kermany_binary_lite0/labels100_seed0/runs/imagenet/models \\
        --output-dir runs/results/kermany_binary_lite0/labels100_seed0/runs/imagenet/output
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from toolkit.bundle.datalists import saved_datalist
from toolkit.bundle.description import load_model_info
from toolkit.evaluation.compare import ComparisonSet, compare_predictions, paired_bootstrap
from toolkit.evaluation.thresholds import THRESHOLDS_FILE, load_thresholds, threshold_vector
from toolkit.studies.experiments import MIN_POSITIVES, scored_findings

# the two `cit infer` runs of each candidate: the fp32 reference first
RUNS = {
    "int8": {"fp32": ["--backend", "onnxruntime"], "int8": ["--backend", "onnxruntime-int8"]},
    "bf16": {"fp32": ["--backend", "pytorch"], "bf16": ["--backend", "pytorch", "--precision", "bf16"]},
}
GUARD = ("max_auroc_drop", "min_agreement")  # options passed on to `cit export`


def _cit(args: list[str], check: bool = True) -> float:
    """Run a `cit` command as a user would; returns its wall seconds (raises when it fails and ``check``)."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "toolkit", *args], check=check, stdout=sys.stderr)  # stdout: JSON
    return time.perf_counter() - started


def check_candidate(args, ckpt_dir: Path, output_dir: Path) -> tuple[dict | None, float]:
    """The candidate's own check, as a user makes it: `cit export --format onnx --int8` or `cit export
    --format bf16-check`. Returns its record (None when the command failed before writing one), seconds."""
    if args.candidate == "int8":
        record_path, how = ckpt_dir / "model.int8.onnx.json", ["--format", "onnx", "--int8"]
        how += [
            "--calibration-method",
            args.calibration_method,
            "--calibration-images",
            str(args.calibration_images),
        ]
    else:
        record_path, how = ckpt_dir / "model.bf16.json", ["--format", "bf16-check"]
    record_path.unlink(missing_ok=True)  # only this run's record is read
    guard = [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k in GUARD and v is not None]
    seconds = _cit(
        ["export", "--bundle", args.bundle, "--ckpt-dir", str(ckpt_dir), "--output-dir", str(output_dir)]
        + how
        + guard,
        check=False,
    )
    return (json.loads(record_path.read_text()) if record_path.is_file() else None), seconds


def infer_both(args, ckpt_dir: Path, root: str, work: Path) -> dict[str, tuple[Path, float]]:
    """`cit infer` over ``root`` as fp32 and as the candidate: {name: (predictions.csv, seconds)}."""
    runs = {}
    for name, backend in RUNS[args.candidate].items():
        out = work / name
        seconds = _cit(
            ["infer", "--bundle", args.bundle, "--ckpt-path", str(ckpt_dir / "model.pt"), "--input", root]
            + ["--output", str(out), *backend, "--restart", "--threads", str(args.threads), "--no-progress"]
            + ["--device", "cpu"]
        )
        runs[name] = (out / "predictions.csv", seconds)
    return runs


def _probabilities(csv_path: Path, root: str, items: list[dict], classes: list[str]) -> np.ndarray:
    """Each test item's probabilities from a `cit infer` predictions.csv (rows keyed by relative path)."""
    with open(csv_path, newline="", encoding="utf-8") as f:
        rows = {row["path"]: row for row in csv.DictReader(f)}
    probs = []
    for item in items:
        row = rows.get(Path(os.path.relpath(item["image"], root)).as_posix())
        if row is None or row["status"] != "ok":
            why = "no row" if row is None else f"status {row['status']}: {row['reason']}"
            raise RuntimeError(f"{csv_path}: test image {item['image']} has no prediction ({why})")
        probs.append([float(row[f"prob_{c}"]) for c in classes])
    return np.asarray(probs)


def score(info, items: list[dict], probs: dict[str, np.ndarray], ckpt_dir: Path, args) -> dict:
    """Both runs on the test items: metrics with CIs, the paired candidate - fp32 difference, agreement."""
    classes, multi = list(info.class_names), bool(info.multi_label)
    name = args.candidate
    y_true = np.asarray([item["label"] for item in items], dtype=int)
    threshold, left_out = 0.5, []
    if multi:  # findings with too few positive or negative test images are left out (module docstring)
        thresholds_file = ckpt_dir / THRESHOLDS_FILE
        stored = load_thresholds(thresholds_file) if thresholds_file.is_file() else None
        keep = scored_findings(y_true, args.min_positives)
        left_out = [c for c, k in zip(classes, keep, strict=True) if not k]
        classes, y_true = [c for c, k in zip(classes, keep, strict=True) if k], y_true[:, keep]
        probs = {k: p[:, keep] for k, p in probs.items()}
        threshold = threshold_vector(stored, classes)
    reference, candidate = probs["fp32"], probs[name]
    if multi:
        agreement = float(((reference >= threshold) == (candidate >= threshold)).mean(axis=0).min())
    else:
        agreement = float((reference.argmax(axis=1) == candidate.argmax(axis=1)).mean())
    groups = [str(i["patient_id"]) for i in items] if all("patient_id" in i for i in items) else None
    test = ComparisonSet([item["image"] for item in items], groups, y_true, classes, multi)
    return {
        "num_images": len(items),
        "resampling_unit": test.unit,
        "findings_left_out": left_out,
        "agreement": agreement,
        "agreement_kind": "lowest per-finding decision agreement" if multi else "top-1",
        "max_abs_probability_difference": float(np.abs(reference - candidate).max()),
        f"{name}_minus_fp32": paired_bootstrap(test, reference, candidate, threshold, args.n_resamples),
        "comparison": compare_predictions(test, probs, threshold, n_resamples=args.n_resamples, seed=0),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", required=True, help="the bundle the model was trained with")
    p.add_argument("--ckpt-dir", required=True, help="folder of model.pt and model_info.json")
    p.add_argument("--output-dir", required=True, help="the training run's output folder (datalist.json)")
    p.add_argument("--split", default="test", help="the split to score (default test)")
    p.add_argument("--candidate", default="int8", choices=sorted(RUNS), help="what is compared with fp32")
    p.add_argument(
        "--work", default=None, help="folder of the two `cit infer` runs (default <output-dir>/<candidate>)"
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--n-resamples", type=int, default=1000)
    p.add_argument("--calibration-method", default="minmax", choices=("minmax", "entropy", "percentile"))
    p.add_argument("--calibration-images", type=int, default=200)
    p.add_argument("--max-auroc-drop", type=float, default=None, help="loosen the export's guard")
    p.add_argument("--min-agreement", type=float, default=None, help="loosen the export's guard")
    p.add_argument(
        "--min-positives", type=int, default=MIN_POSITIVES, help="multi-label: findings scored (see above)"
    )
    args = p.parse_args(argv)

    ckpt_dir, output_dir = Path(args.ckpt_dir).resolve(), Path(args.output_dir).resolve()
    info = load_model_info(ckpt_dir)
    items = saved_datalist(output_dir, model_info=info).get(args.split) or []
    if not items:
        raise SystemExit(f"{output_dir / 'datalist.json'} has no {args.split!r} split")
    said, seconds = {"candidate": args.candidate}, {}
    record, seconds["check_on_validation"] = check_candidate(args, ckpt_dir, output_dir)
    if record is None:
        raise SystemExit("cit export failed before its check (see its message above)")
    said.update({key: record[key] for key in ("usable", "calibration", "quantization") if key in record})
    said["guard_on_validation"] = {k: record["validation"][k] for k in ("summary", "criteria", "refusal")}
    if not record["usable"]:
        print(json.dumps(said, indent=1))
        return 1
    root = os.path.commonpath([os.path.dirname(item["image"]) for item in items])
    runs = infer_both(args, ckpt_dir, root, Path(args.work or output_dir / args.candidate).resolve())
    probs = {
        name: _probabilities(csv_path, root, items, list(info.class_names))
        for name, (csv_path, _) in runs.items()
    }
    seconds.update({f"cit_infer_{k}": v for k, (_, v) in runs.items()})
    result = {"split": args.split, **said, **score(info, items, probs, ckpt_dir, args), "seconds": seconds}
    print(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
