"""`cit datalist` and `cit synth`: build a datalist JSON, write the synthetic demo data."""

from __future__ import annotations

import argparse
import logging

from toolkit.data.datalist import build_datalist, load_datalist, summarize
from toolkit.data.synthetic import make_synthetic_dataset


def _datalist(args: argparse.Namespace) -> int:
    path = build_datalist(
        args.source,
        args.out,
        ratios=args.ratios,
        val_fraction=args.val_fraction,
        seed=args.seed,
        classes=args.classes.split(",") if args.classes else None,
        label_from_name=args.label_from_name,
        patient_from_name=args.patient_from_name,
    )
    print(f"datalist: {path}")
    print(summarize(load_datalist(path)))
    return 0


def _synth(args: argparse.Namespace) -> int:
    path = make_synthetic_dataset(
        args.out_dir,
        n_patients=args.n_patients,
        images_per_patient=args.images_per_patient,
        image_size=args.image_size,
        seed=args.seed,
    )
    print(f"datalist: {path}")
    print(summarize(load_datalist(path)))
    return 0


def add_parser(subparsers) -> None:
    """Add the ``datalist`` and ``synth`` sub-commands."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    p = subparsers.add_parser(
        "datalist",
        help="build a datalist JSON from a folder, CSV, MedMNIST .npz or DICOM folder",
        description="Build a decathlon-style datalist JSON (published splits kept, otherwise split by patient).",
    )
    p.add_argument(
        "source", help="class-per-folder tree, DICOM folder, CSV manifest, MedMNIST .npz or datalist .json"
    )
    p.add_argument("--out", required=True, help="datalist JSON to write")
    p.add_argument(
        "--ratios",
        default=None,
        help="split ratios, e.g. training=0.8,validation=0.1,test=0.1 or 85:15 (default 80/10/10)",
    )
    p.add_argument(
        "--val-fraction", type=float, default=0.15, help="validation carved from a published training split"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--classes", default=None, help="comma-separated class names, in label order; images of other classes are left out"
    )
    p.add_argument(
        "--label-from-name", default=None, help="label preset from file names, e.g. kermany_3class"
    )
    p.add_argument(
        "--patient-from-name", default=None, help="patient-id preset from file names, e.g. kermany"
    )
    p.set_defaults(func=_datalist)

    s = subparsers.add_parser(
        "synth",
        help="write the synthetic demo data set (DICOM + PNG) and its datalist",
        description="Write synthetic head scans (3 lesion classes) as DICOM CT/MR and PNG, split by patient.",
    )
    s.add_argument("out_dir")
    s.add_argument("--n-patients", type=int, default=30)
    s.add_argument("--images-per-patient", type=int, default=4)
    s.add_argument("--image-size", type=int, default=256)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=_synth)
