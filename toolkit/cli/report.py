"""`cit report`: the HTML evaluation report."""

from __future__ import annotations

import argparse
import logging
import pickle
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # no torch at `cit --help`
    from toolkit.evaluation.gradcam import ExplainableModel

# Why a bundle cannot give the model for Grad-CAM: missing files (OSError), a config MONAI cannot
# evaluate (RuntimeError) or that lacks an id (KeyError), invalid values or weights (ValueError,
# RuntimeError from load_state_dict, pickle.UnpicklingError from torch.load).
BUNDLE_ERRORS = (OSError, RuntimeError, KeyError, ValueError, pickle.UnpicklingError)


def _model_for_gradcam(
    bundle: str, ckpt_dir: Path, trust: bool = False
) -> tuple[ExplainableModel | None, list[str]]:
    """(the bundle's network, preprocessing and class names as an ExplainableModel, []), or (None, [why])
    when the bundle cannot be loaded: a report without heat maps beats no report."""
    from toolkit.bundle import load_bundle
    from toolkit.evaluation.gradcam import ExplainableModel

    try:
        loaded = load_bundle(bundle, ckpt_path=ckpt_dir / "model.pt", device="cpu", trust=trust)
    except BUNDLE_ERRORS as e:
        logging.getLogger(__name__).debug("cannot load the bundle %s", bundle, exc_info=True)
        return None, [
            f"Grad-CAM overlays could not be made: the bundle {bundle} did not load: {type(e).__name__}: {e}"
        ]
    return ExplainableModel(loaded.network, loaded.preprocessing, list(loaded.class_names)), []


def _report(args: argparse.Namespace) -> int:
    from toolkit.evaluation.calibration import TEMPERATURE_FILE
    from toolkit.evaluation.report import build_report

    if args.save_temperature and not (args.bundle or args.ckpt_dir):
        raise ValueError(
            "--save-temperature needs --bundle or --ckpt-dir: the temperature is saved beside the weights"
        )
    # the trained model: --ckpt-dir, else the bundle's models/ (model.pt + model_info.json + temperature.json)
    ckpt_dir = Path(args.ckpt_dir) if args.ckpt_dir else Path(args.bundle or ".") / "models"
    model, notes, n_cam = None, [], args.n_cam
    if args.bundle and n_cam > 0:
        model, notes = _model_for_gradcam(args.bundle, ckpt_dir, trust=args.trust_bundle)
        n_cam = n_cam if model is not None else 0  # the note says why there are no heat maps
    summary = build_report(
        args.eval_dir,
        out_dir=args.out_dir,
        validation_predictions=args.validation_predictions,
        history=args.history,
        model=model,
        n_resamples=args.n_resamples,
        seed=args.seed,
        target_sensitivity=args.target_sensitivity,
        cam_method=args.cam,
        n_cam=n_cam,
        temperature_file=ckpt_dir / TEMPERATURE_FILE if args.save_temperature else None,
        title=f"Evaluation report: {Path(args.bundle).resolve().name}" if args.bundle else None,
        audit=args.audit,
        notes=notes,
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
    if args.strict and (notes or summary["warnings"]):
        print(f"--strict: {len(notes) + len(summary['warnings'])} warning(s) above", file=sys.stderr)
        return 1
    return 0


def add_parser(subparsers) -> None:
    """Add the ``report`` sub-command."""

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
    r.add_argument(
        "--validation-predictions",
        default=None,
        help="validation predictions.csv (default <eval-dir>/../eval_validation/predictions.csv if present)",
    )
    r.add_argument(
        "--history",
        default=None,
        help="training_history.csv (default <eval-dir>/../train/training_history.csv)",
    )
    r.add_argument("--n-resamples", type=int, default=1000, help="bootstrap resamples (default 1000)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument(
        "--trust-bundle",
        action="store_true",
        help="load a bundle folder from elsewhere even if its configs hold code this toolkit's bundles do not",
    )
    r.add_argument(
        "--target-sensitivity", type=float, default=0.9, help="for the operating points (default 0.9)"
    )
    r.add_argument("--cam", choices=("gradcam", "gradcampp"), default="gradcam", help="heat-map method")
    r.add_argument(
        "--n-cam", type=int, default=4, help="right and wrong predictions to explain, each (default 4)"
    )
    r.add_argument(
        "--ckpt-dir",
        default=None,
        help="folder of the trained model (model.pt + model_info.json) when not <bundle>/models",
    )
    r.add_argument(
        "--save-temperature",
        action="store_true",
        help="save the temperature fitted on validation beside the weights (<ckpt-dir>/temperature.json)",
    )
    r.add_argument(
        "--strict",
        action="store_true",
        help="exit with status 1 when the report has warnings (e.g. a Grad-CAM panel that failed)",
    )
    r.add_argument(
        "--audit", default=None, help="audit.json of `cit audit` on the data set, shown in the report"
    )
    r.set_defaults(func=_report)
