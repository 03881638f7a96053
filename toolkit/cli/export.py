"""`cit export` (a trained bundle as a portable folder, or its model as TorchScript / .pt2 / ONNX) and
`cit fetch-weights` (the weights a published bundle lists in large_files.yml)."""

from __future__ import annotations

import argparse
import ipaddress
import re
import sys
import urllib.parse
from pathlib import Path

# what makes an export fail as a whole: missing files (OSError), an export that does not reproduce the
# eager model or a config MONAI cannot evaluate (RuntimeError), a wrong option or description (ValueError)
EXPORT_ERRORS = (OSError, RuntimeError, ValueError)


def _export(args: argparse.Namespace) -> int:
    from toolkit.bundle import export

    try:
        if args.format == "bundle":
            if not args.out:
                raise ValueError("--out is required with --format bundle (the folder to write the bundle to)")
            eval_dir = Path(args.output_dir) / "eval" if args.output_dir else None
            out = export.pack_bundle(
                args.bundle,
                args.out,
                ckpt_dir=args.ckpt_dir,
                force=args.force,
                base_url=args.base_url,
                eval_dir=eval_dir,
            )
            print(f"bundle: {out}")
            return 0
        if args.format == "bf16-check":
            return _bf16(args)
        if args.int8 and args.format != "onnx":
            raise ValueError("--int8 quantizes the ONNX export: pass --format onnx")
        result = export.export_model(
            args.bundle,
            args.format,
            out_path=args.out,
            ckpt_dir=args.ckpt_dir,
            check_inputs=args.check_inputs,
            output_dir=args.output_dir,
        )
        print(
            f"{args.format}: {result.path} (max |difference| to the eager model {result.max_abs_difference:.1e} "
            f"on {result.num_images} image(s), tolerance {export.TOLERANCE:g})"
        )
        if args.int8:
            return _int8(args, result.path)
    except EXPORT_ERRORS as err:
        print(f"cit export: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    return 0


def _run_dirs(args: argparse.Namespace) -> tuple[Path, Path]:
    """The trained model's folder and its training run's output folder (the recorded split)."""
    bundle = Path(args.bundle).resolve()
    ckpt_dir = Path(args.ckpt_dir).resolve() if args.ckpt_dir else bundle / "models"
    return ckpt_dir, Path(args.output_dir) if args.output_dir else bundle / "output"


def _guard_options(args: argparse.Namespace, *names: str) -> dict:
    """The guard's options given on the command line (their defaults live in toolkit.bundle.precision_guard)."""
    given = {
        "max_auroc_drop": args.max_auroc_drop,
        "min_agreement": args.min_agreement,
        "calibration_images": args.calibration_images,
        "method": args.calibration_method,
    }
    return {key: given[key] for key in names if given[key] is not None}


def _int8(args: argparse.Namespace, onnx_path: Path) -> int:
    from toolkit.bundle import quantize
    from toolkit.bundle.precision_guard import GuardRefused

    options = _guard_options(args, "calibration_images", "method", "max_auroc_drop", "min_agreement")
    try:
        result = quantize.quantize_onnx(onnx_path, *_run_dirs(args), **options)
    except GuardRefused as err:
        print(f"cit export: refused: {err}", file=sys.stderr)
        return 1
    print(f"int8: {result.path} ({result.record['validation']['summary']})")
    return 0


def _bf16(args: argparse.Namespace) -> int:
    from toolkit.bundle.bf16_check import BF16_RECORD, check_bf16
    from toolkit.bundle.precision_guard import GuardRefused

    ckpt_dir, output_dir = _run_dirs(args)
    try:
        record = check_bf16(ckpt_dir, output_dir, **_guard_options(args, "max_auroc_drop", "min_agreement"))
    except GuardRefused as err:
        print(f"cit export: refused: {err}", file=sys.stderr)
        return 1
    print(f"bf16: usable, {ckpt_dir / BF16_RECORD} ({record['validation']['summary']})")
    return 0


def add_parser(subparsers) -> None:
    """Add the ``export`` sub-command."""
    p = subparsers.add_parser(
        "export",
        help="export a trained bundle: portable bundle folder, TorchScript, torch.export or ONNX",
        description=(
            "--format bundle writes a self-contained copy of the bundle (shared configs expanded, bundle_root '.', "
            "weights + model_info.json, metadata.json describing the trained classes and input) for MONAI Label, "
            "MONAI Deploy or another machine. The model formats (torchscript: model.ts with metadata.json and "
            "inference.json inside, as MONAI Deploy reads it; export: torch.export .pt2; onnx: opset 18) are "
            "checked against the eager model on real images; a difference above 1e-4 fails the command."
        ),
    )
    p.add_argument("--bundle", required=True, help="bundle folder (e.g. bundles/resnet18_brain_ct)")
    p.add_argument(
        "--format",
        required=True,
        choices=("bundle", "torchscript", "export", "onnx", "bf16-check"),
        help="bf16-check writes no model: it compares the weights under CPU bf16 autocast with fp32 on "
        "the validation split (model.bf16.json), which `cit infer --precision bf16` requires",
    )
    p.add_argument(
        "--ckpt-dir",
        default=None,
        help="folder of the trained model.pt + model_info.json (default <bundle>/models)",
    )
    p.add_argument(
        "--out", default=None, help="output folder (bundle) or file (default <ckpt-dir>/model.ts|.pt2|.onnx)"
    )
    p.add_argument(
        "--output-dir",
        default=None,
        help="the training run's output folder: its test split gives the check images, its eval/ the figures "
        "of the exported metadata.json (default <bundle>/output; for --format bundle <ckpt-dir>/../output)",
    )
    p.add_argument("--check-inputs", default=None, help="folder of images to check the export on instead")
    p.add_argument("--force", action="store_true", help="write the bundle into a non-empty --out")
    _add_int8_options(p)
    p.add_argument(
        "--base-url",
        default=None,
        help="with --format bundle: URL the bundle folder will be published at; writes large_files.yml "
        "(URL + SHA-256 of each weight file) for `cit fetch-weights`",
    )
    p.set_defaults(func=_export)
    _add_fetch_weights_parser(subparsers)


def _add_int8_options(p) -> None:
    """The options of ``--int8`` (and of the bf16 check's guard): calibration and the accuracy guard."""
    p.add_argument(
        "--int8",
        action="store_true",
        help="with --format onnx: also write model.int8.onnx beside it (ONNX Runtime static quantization, "
        "QDQ, per-channel int8 weights, uint8 activations) calibrated on the recorded training split, "
        "and compare it with the fp32 model on the validation split (model.int8.onnx.json); it is "
        "marked usable, and used by `cit infer`, only when it passes --max-auroc-drop and "
        "--min-agreement",
    )
    # defaults (None here) live in toolkit.bundle.quantize / precision_guard, imported only when used
    p.add_argument(
        "--calibration-images",
        type=int,
        default=None,
        help="training images the int8 ranges are calibrated on (default 200)",
    )
    p.add_argument(
        "--calibration-method",
        default=None,
        choices=("minmax", "entropy", "percentile"),
        help="ONNX Runtime's calibration method (default minmax)",
    )
    p.add_argument(
        "--max-auroc-drop",
        type=float,
        default=None,
        help="largest AUROC loss of any class / finding on validation for a usable int8 (or bf16) model "
        "(default 0.005)",
    )
    p.add_argument(
        "--min-agreement",
        type=float,
        default=None,
        help="smallest top-1 agreement with fp32 on validation (multi-label: decision agreement of "
        "each finding at its stored threshold) for a usable int8 (or bf16) model (default 0.99)",
    )


def _add_fetch_weights_parser(subparsers) -> None:
    """Add the ``fetch-weights`` sub-command."""
    f = subparsers.add_parser(
        "fetch-weights",
        help="download a bundle's weight files listed in its large_files.yml (SHA-256 checked)",
        description=(
            "Downloads every file of <bundle>/large_files.yml into the bundle (MONAI's download_large_files: "
            "the same as `python -m monai.bundle download_large_files --bundle_path <bundle>`); a file already "
            "there with the right hash is kept, a hash mismatch is an error."
        ),
    )
    f.add_argument("--bundle", required=True, help="bundle folder holding large_files.yml")
    f.set_defaults(func=_fetch)


def unsafe_large_files(bundle: str | Path) -> list[str]:
    """What makes the ``large_files`` entries of ``bundle`` unsafe to fetch, one line each (empty: none).

    A published bundle comes from elsewhere, so its list is checked before anything is downloaded:
    every entry needs a SHA-256 (64 hex digits; md5 or none is refused: the file could then be
    anything), an https URL (plain http only to this machine's loopback, as in tests; ``file://`` and
    other schemes are refused: they would copy local files into the bundle as "verified"), and a
    path inside the bundle folder.
    """
    from monai.bundle import ConfigParser

    bundle = Path(bundle)
    found = [
        bundle / f"large_files.{ext}"
        for ext in ("yml", "yaml", "json")
        if (bundle / f"large_files.{ext}").is_file()
    ]
    if not found:
        return [f"{bundle}: no large_files.yml (nothing to fetch)"]
    entries = ConfigParser.load_config_file(found[0]).get("large_files") or []
    problems = []
    for n, entry in enumerate(entries if isinstance(entries, list) else [entries]):
        entry = entry if isinstance(entry, dict) else {}
        name = str(entry.get("path") or f"entry {n + 1}")
        url = urllib.parse.urlsplit(str(entry.get("url") or ""))
        if str(entry.get("hash_type") or "").lower() != "sha256" or not re.fullmatch(
            r"[0-9a-fA-F]{64}", str(entry.get("hash_val") or "")
        ):
            problems.append(
                f"{name}: no SHA-256 (hash_type {entry.get('hash_type')!r}); an unverified file is refused"
            )
        if url.scheme != "https" and not (url.scheme == "http" and _loopback(url.hostname)):
            problems.append(
                f"{name}: URL scheme {url.scheme or 'missing'!r} refused (https, or http to loopback only)"
            )
        target = (bundle / str(entry.get("path") or "")).resolve()
        if not entry.get("path") or bundle.resolve() not in target.parents:
            problems.append(f"{name}: the path does not stay inside the bundle folder")
    return problems


def _loopback(host: str | None) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


def _fetch(args: argparse.Namespace) -> int:
    from monai.bundle import download_large_files

    problems = unsafe_large_files(args.bundle)
    if problems:
        for line in problems:
            print(f"cit fetch-weights: refused: {line}", file=sys.stderr)
        return 1
    try:
        download_large_files(bundle_path=args.bundle)
    except EXPORT_ERRORS as err:
        print(f"cit fetch-weights: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    print(f"weights of {args.bundle} present and verified")
    return 0
