"""`cit report`: the HTML evaluation report."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path


def _report(args: argparse.Namespace) -> int:
    from toolkit.evaluation.report import build_report

    summary = build_report(
        args.eval_dir,
        bundle_dir=args.bundle,
        out_dir=args.out_dir,
        validation_predictions=args.validation_predictions,
        history=args.history,
        n_resamples=args.n_resamples,
        seed=args.seed,
        target_sensitivity=args.target_sensitivity,
        cam_method=args.cam,
        n_cam=args.n_cam,
        save_temperature=args.save_temperature,
        audit=args.audit,
    )
    for warning in summary["warnings"]:
        print(f"note: {warning}")
    cal = summary["calibration"]
    line = f"ECE {cal['ece_before']:.3f}"
    if cal.get("temperature") is not None:
        line += f" -> {cal['ece_after']:.3f} with T = {cal['temperature']:.3f}"
    print(line)
    if cal.get("saved_to"):
        print(f"temperature saved: {cal['saved_to']}")
    print(f"report: {summary['html']}")
    return 0


def add_parser(subparsers) -> None:
    """Add the ``report`` sub-command."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    r = subparsers.add_parser(
        "report",
        help="HTML evaluation report: metrics with 95%% CIs, curves, calibration, Grad-CAM",
        description=(
            "Build a self-contained HTML report (and PNGs) from an evaluation folder holding predictions.csv: "
            "metrics with bootstrap confidence intervals, confusion matrices, ROC / PR curves, calibration "
            "(temperature scaling on validation predictions), operating points, sample images and Grad-CAM."
        ),
    )
    r.add_argument("--eval-dir", required=True, help="folder with predictions.csv (e.g. <output_dir>/eval)")
    r.add_argument(
        "--bundle", default=None, help="bundle folder, for Grad-CAM overlays and --save-temperature"
    )
    r.add_argument("--out-dir", default=None, help="report folder (default <eval-dir>/report)")
    r.add_argument("--validation-predictions", default=None,
                   help="validation predictions.csv (default <eval-dir>/../eval_validation/predictions.csv if present)")  # fmt: skip
    r.add_argument(
        "--history",
        default=None,
        help="training_history.csv (default <eval-dir>/../train/training_history.csv)",
    )
    r.add_argument("--n-resamples", type=int, default=1000, help="bootstrap resamples (default 1000)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument(
        "--target-sensitivity", type=float, default=0.9, help="for the operating points (default 0.9)"
    )
    r.add_argument("--cam", choices=("gradcam", "gradcampp"), default="gradcam", help="heat-map method")
    r.add_argument(
        "--n-cam", type=int, default=4, help="right and wrong predictions to explain, each (default 4)"
    )
    r.add_argument("--save-temperature", action="store_true",
                   help="save the temperature fitted on validation to <bundle>/models/temperature.json")  # fmt: skip
    r.add_argument(
        "--audit", default=None, help="audit.json of `cit audit` on the data set, shown in the report"
    )
    r.set_defaults(func=_report)
