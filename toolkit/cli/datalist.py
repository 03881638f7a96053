"""`cit datalist` and `cit synth`: build a datalist JSON, write the synthetic demo data."""

from __future__ import annotations

import argparse
import sys
from collections import Counter

from toolkit.data.datalist import build_datalist, load_datalist, split_keys, summarize
from toolkit.data.headers import colour_mode
from toolkit.data.sources.csv_manifest import IMAGE_COLUMNS, LABEL_COLUMNS, PATIENT_COLUMNS, SPLIT_COLUMNS
from toolkit.data.sources.registry import command_line_values, option_fields
from toolkit.data.synthetic import make_synthetic_dataset

# What a bad source raises (a one-line message naming the file); anything else is a bug and keeps its traceback.
BAD_INPUT = (ValueError, OSError)

SOURCE_EPILOG = f"""\
sources:
  folder           class-per-folder tree, optionally under train/ val/ test/ folders; a folder holding
                   images and ONE label file (CSV / TSV) uses that file when its folder tree would give
                   one class, or when a column option is given (said in the log); a folder tree giving
                   one class is otherwise an error (--classes or --allow-single-class if it is meant)
  label file       CSV, TSV or Excel-exported CSV (separator , ; tab or |, found from the header row;
                   UTF-8 with or without BOM, else Windows-1252); spaces around names and values are
                   stripped; NIH Data_Entry_2017.csv is recognised
  other            DICOM folder with a CSV keyed by a DICOM attribute, MedMNIST .npz, datalist .json

columns found by name when not given (case, spaces, '_' and '-' ignored):
  image    {", ".join(IMAGE_COLUMNS)}
           else the column whose values match image file names below the folder
           (file name, stem, or number: id 7 -> 007.png), or --image-pattern
  label    {", ".join(LABEL_COLUMNS)}, else the only other column;
           names or integer class indices (0, 1, ...); --classes fixes the order
  patient  {", ".join(PATIENT_COLUMNS)}   (no patient is in two splits)
  split    {", ".join(SPLIT_COLUMNS)}   (train / val / test ...: the published split is kept)

problems in a label file are errors naming the file and column: unknown column (with the closest
name), image missing for a row (count + first five; --skip-missing skips them), row without a label,
image listed twice.

ratios: --ratios training=0.7,validation=0.15,test=0.15 (named; a part may be left out, e.g.
training=0.8,test=0.2); unnamed parts must be all three, in the order training:validation:test
(70:15:15). Default 80/10/10. Published splits are kept instead (validation carved from training).
"""


def add_source_options(parser: argparse.ArgumentParser) -> None:
    """The options that say how to read a data source (shared by `cit datalist`, `cit audit` and
    `cit compare`): one per field of the sources' options dataclasses (``toolkit.data.sources.registry``),
    in argument groups as the fields declare them."""
    groups = {}
    for name, f in option_fields().items():
        title = f.metadata["group"]
        if title not in groups:
            groups[title] = parser.add_argument_group(title)
        flag = "--" + name.replace("_", "-")
        groups[title].add_argument(flag, default=f.default, help=f.metadata["help"], **f.metadata["argparse"])


def source_options(args: argparse.Namespace) -> dict:
    """``build_datalist`` keyword arguments from the options of :func:`add_source_options` (those given)."""
    return command_line_values(vars(args))


def fail(command: str, err: BaseException) -> int:
    """Print a bad-input error as one line on stderr; the exit status of such a run."""
    message = " ".join(str(err).split())
    print(f"cit {command}: error: {message}", file=sys.stderr)
    return 2


def colour_modes(doc: dict) -> Counter:
    """How many images of a loaded datalist have each colour mode (Pillow mode, DICOM photometric)."""
    modes: Counter = Counter()
    for split in split_keys(doc):
        for item in doc[split]:
            image = item["image"][0] if isinstance(item["image"], list) else item["image"]
            modes[colour_mode(image)] += 1
    return modes


def _datalist(args: argparse.Namespace) -> int:
    try:
        path = build_datalist(
            args.source,
            args.out,
            ratios=args.ratios,
            val_fraction=args.val_fraction,
            seed=args.seed,
            group_column=args.group_column,
            **source_options(args),
        )
        doc = load_datalist(path)
    except BAD_INPUT as err:
        return fail("datalist", err)
    print(f"datalist: {path}")
    print(summarize(doc))
    modes = colour_modes(doc)
    print("colour modes: " + ", ".join(f"{mode} {n}" for mode, n in modes.most_common()))
    if any(m in ("RGBA", "LA", "PA") for m in modes):
        print(
            "  images with an alpha channel: the transforms drop alpha unless alpha='black' composites them on black"
        )
    if len(modes) > 1:
        print("  mixed modes: check that they do not follow the classes (`cit audit` tests it)")
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

    p = subparsers.add_parser(
        "datalist",
        help="build a datalist JSON from a folder, label file (CSV / TSV), MedMNIST .npz or DICOM folder",
        description="Build a decathlon-style datalist JSON (published splits kept, otherwise split by patient, "
        "stratified by class); prints the images per split and class and the colour modes met.",
        epilog=SOURCE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "source",
        help="class-per-folder tree, folder with a label file, CSV / TSV, DICOM folder, .npz or datalist .json",
    )
    p.add_argument("--out", required=True, help="datalist JSON to write")
    p.add_argument(
        "--ratios",
        default=None,
        help="split ratios, named: training=0.7,validation=0.15,test=0.15 (default 80/10/10); unnamed parts "
        "must be all three, training:validation:test (70:15:15)",
    )
    p.add_argument(
        "--val-fraction", type=float, default=0.15, help="validation carved from a published training split"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--group-column",
        default=None,
        metavar="COLUMN",
        help="label-file column whose value the split keeps in one part, like a patient id and as well as it "
        "(e.g. source_tile: the original image that augmented copies were made from)",
    )
    add_source_options(p)
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
