"""`cit audit`: data-set audit and leakage check.

The audit lives in the data layer (``toolkit.data.audit``) and reads images with the function it
is given; this command gives it the toolkit's readers from ``toolkit.transforms``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from toolkit.data.audit import DEFAULT_CONFIRM, DEFAULT_HAMMING, run_audit


def read_image(path: str):
    """Pixels of one image as the toolkit's transforms read it (a multi-frame DICOM: its middle
    frame); raises ``ImageReadError`` (a ValueError) naming the file when it cannot be read.

    Module-level, so ``--workers`` processes can pickle it.
    """
    # torch + MONAI take seconds to import: only when images are read, so `cit --help` stays fast.
    from toolkit.transforms.readers import MedicalImageReader

    reader = MedicalImageReader(dicom_frame="middle")
    return reader.get_data(reader.read(path))[0]


def _audit(args: argparse.Namespace) -> int:
    source = Path(args.datalist)
    if args.out_dir:
        out_dir = Path(args.out_dir)
    elif source.suffix.lower() == ".json":
        out_dir = source.parent / "audit"  # beside the datalist
    else:  # never write into a data folder, which may be read-only or shared
        out_dir = Path.cwd() / f"audit_{source.stem or source.name}"
    build = {
        k: v
        for k, v in (("patient_from_name", args.patient_from_name), ("label_from_name", args.label_from_name))
        if v
    }
    report = run_audit(
        source,
        out_dir,
        read_image,
        threshold=args.hamming,
        transforms=not args.no_transforms,
        confirm=None if args.confirm_hamming < 0 else args.confirm_hamming,
        workers=args.workers,
        write_regrouped=not args.no_regroup,
        seed=args.seed,
        **build,
    )
    leak = report["leakage"]
    print(
        f"audited {report['num_items']} images ({len(report['unreadable'])} unreadable) in {report['elapsed_seconds']} s"
    )
    for pair, counts in leak["counts_by_split_pair"].items():
        described = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in counts.items())
        print(f"  {pair.replace('|', ' / ')}: {described}")
    print("LEAKAGE FOUND" if leak["found"] else "no leakage found")
    for name, path in report["outputs"].items():
        print(f"{name}: {path}")
    if report.get("regrouped_datalist"):
        print(
            f"regrouped datalist (patients and duplicate clusters kept together): {report['regrouped_datalist']}"
        )
    return 1 if args.strict and leak["found"] else 0


def add_parser(subparsers) -> None:
    """Add the ``audit`` sub-command."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    a = subparsers.add_parser(
        "audit",
        help="audit a data set: class balance, image properties, unreadable files, train/test leakage",
        description=(
            "Audit a datalist (or a folder / CSV / MedMNIST .npz, turned into one with `cit datalist` rules): "
            "class balance per split, image sizes / bit depth / modality / photometric interpretation, "
            "unreadable files, and leakage between splits (shared patients, exact and near-duplicate images). "
            "Writes audit.json, audit.md and a regrouped datalist that keeps patients and duplicates together."
        ),
    )
    a.add_argument(
        "--datalist", required=True, help="datalist .json, or a folder / CSV / .npz to build one from"
    )
    a.add_argument(
        "--out-dir",
        default=None,
        help="output folder (default: <datalist folder>/audit for a .json, else ./audit_<source name>)",
    )
    a.add_argument(
        "--hamming",
        type=int,
        default=DEFAULT_HAMMING,
        help=f"max 64-bit pHash distance of near-duplicate candidates (default {DEFAULT_HAMMING})",
    )
    a.add_argument(
        "--confirm-hamming",
        type=int,
        default=DEFAULT_CONFIRM,
        help=f"max 256-bit pHash distance confirming a candidate (default {DEFAULT_CONFIRM}; -1: none)",
    )
    a.add_argument("--no-transforms", action="store_true", help="do not match rotated / flipped copies")
    a.add_argument("--workers", type=int, default=1, help="processes reading images (default 1)")
    a.add_argument("--no-regroup", action="store_true", help="do not write datalist_regrouped.json")
    a.add_argument("--seed", type=int, default=0, help="seed of the regrouped split")
    a.add_argument("--strict", action="store_true", help="exit with status 1 when leakage is found")
    a.add_argument("--patient-from-name", default=None, help="patient-id preset when building from a folder")
    a.add_argument("--label-from-name", default=None, help="label preset when building from a folder")
    a.set_defaults(func=_audit)
