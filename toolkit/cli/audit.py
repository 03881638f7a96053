"""`cit audit`: data-set audit and leakage check.

The audit lives in the data layer (``toolkit.data.audit``) and reads images with the function it
is given; this command gives it the toolkit's readers from ``toolkit.transforms``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import warnings
from pathlib import Path

from toolkit.cli.datalist import BAD_INPUT, add_source_options, fail, source_options
from toolkit.data.audit import DEFAULT_CONFIRM, DEFAULT_HAMMING, DEFAULT_PIXEL, run_audit
from toolkit.data.audit.embeddings import DEFAULT_MIN_INLIERS, DEFAULT_MIN_SIMILARITY, DEFAULT_NEIGHBOURS


def read_image(path: str):
    """Pixels of one image as the toolkit's transforms read it (a multi-frame DICOM: its middle
    frame); raises ``ImageReadError`` (a ValueError) naming the file when it cannot be read.

    Module-level, so ``--workers`` processes can pickle it.
    """
    # torch + MONAI take seconds to import: only when images are read, so `cit --help` stays fast.
    from toolkit.transforms.readers import MedicalImageReader

    reader = MedicalImageReader(dicom_frame="middle")
    with _quiet_readers():  # also here: a --workers process may not inherit the state of _audit
        return reader.get_data(reader.read(path))[0]


@contextlib.contextmanager
def _quiet_readers():
    """No per-file log lines from the readers or the source scan during the block: pydicom logs decoder
    tracebacks and warnings quoting full paths and element values (patient data), and every file that is
    not audited is listed with its reason in audit.json ``unreadable`` instead."""
    levels = {
        "pydicom": logging.CRITICAL,
        "highdicom": logging.CRITICAL,
        "toolkit.data.sources": logging.ERROR,
    }
    saved = {name: logging.getLogger(name).level for name in levels}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        try:
            yield
        finally:
            for name, level in saved.items():
                logging.getLogger(name).setLevel(level)


def _audit(args: argparse.Namespace) -> int:
    source = Path(args.datalist)
    if args.out_dir:
        out_dir = Path(args.out_dir)
    elif source.suffix.lower() == ".json":
        out_dir = source.parent / "audit"  # beside the datalist
    else:  # never write into a data folder, which may be read-only or shared
        out_dir = Path.cwd() / f"audit_{source.stem or source.name}"
    embedder = None
    if args.embeddings:
        from toolkit.networks.embeddings import ImageEmbedder  # torch + timm: only when asked for

        embedder = ImageEmbedder()
    try:
        with _quiet_readers():
            report = run_audit(
                source,
                out_dir,
                read_image,
                threshold=args.hamming,
                transforms=not args.no_transforms,
                confirm=None if args.confirm_hamming < 0 else args.confirm_hamming,
                confirm_pixels=None if args.confirm_pixels < 0 else args.confirm_pixels,
                workers=args.workers,
                write_regrouped=not args.no_regroup,
                seed=args.seed,
                embedder=embedder,
                neighbours=args.neighbours,
                min_similarity=args.min_similarity,
                min_inliers=args.min_inliers,
                embedding_cache=args.embedding_cache,
                **source_options(args),
            )
    except BAD_INPUT as err:  # a bad source (label file, folder, datalist): one line, no traceback
        return fail("audit", err)
    leak = report["leakage"]
    print(
        f"audited {report['num_items']} images ({len(report['unreadable'])} unreadable) in {report['elapsed_seconds']} s"
    )
    modes = report["image_stats"].get("photometric", {})
    print("colour modes: " + ", ".join(f"{k} {v}" for k, v in modes.items()))
    for pair, counts in leak["counts_by_split_pair"].items():
        described = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in counts.items())
        print(f"  {pair.replace('|', ' / ')}: {described}")
    print("LEAKAGE FOUND" if leak["found"] else "no leakage found")
    flags = report["confounds"]["flags"]
    print("CONFOUND FOUND: " + "; ".join(f["text"] for f in flags) if flags else "no confound found")
    for name, path in report["outputs"].items():
        print(f"{name}: {path}")
    if report.get("regrouped_datalist"):
        print(
            f"regrouped datalist (patients and duplicate clusters kept together): {report['regrouped_datalist']}"
        )
    return 1 if args.strict and leak["found"] else 0


def _add_phash_options(parser) -> None:
    """The first near-duplicate stage: perceptual hashes, confirmed on the pixels."""
    group = parser.add_argument_group("near duplicates: perceptual hashes (exact, flipped, turned copies)")
    group.add_argument(
        "--hamming",
        type=int,
        default=DEFAULT_HAMMING,
        help=f"max 64-bit pHash distance of near-duplicate candidates (default {DEFAULT_HAMMING})",
    )
    group.add_argument(
        "--confirm-hamming",
        type=int,
        default=DEFAULT_CONFIRM,
        help=f"max 256-bit pHash distance confirming a candidate (default {DEFAULT_CONFIRM}; -1: none)",
    )
    group.add_argument(
        "--confirm-pixels",
        type=float,
        default=DEFAULT_PIXEL,
        help="max pixel difference confirming a candidate: mean absolute difference of the 32 px grey "
        "thumbnails, each scaled to mean 0 / SD 1, under the matched rotation / flip "
        f"(default {DEFAULT_PIXEL}; -1: none)",
    )
    group.add_argument("--no-transforms", action="store_true", help="do not match rotated / flipped copies")


def _add_embedding_options(parser) -> None:
    """The second, opt-in near-duplicate stage: embeddings, nearest neighbours, keypoints."""
    group = parser.add_argument_group(
        "near duplicates: embeddings (slightly rotated, zoomed, cropped copies)"
    )
    group.add_argument(
        "--embeddings",
        action="store_true",
        help="also run the second near-duplicate stage (ImageNet EfficientNet-Lite0 embeddings, nearest neighbours, "
        "confirmed on SIFT keypoints under rotation / zoom / shift / mirror), which finds copies rotated by a few "
        "degrees, zoomed or cropped (LC25000); slower: about 0.3 s per image on 2 cores (--workers N helps). "
        "For histology-like images only: on chest radiographs it pairs different patients (docs/data-audit.md)",
    )
    group.add_argument(
        "--neighbours",
        type=int,
        default=DEFAULT_NEIGHBOURS,
        help=f"embedding stage: nearest neighbours per image (default {DEFAULT_NEIGHBOURS})",
    )
    group.add_argument(
        "--min-similarity",
        type=float,
        default=DEFAULT_MIN_SIMILARITY,
        help=f"embedding stage: min cosine similarity of a candidate (default {DEFAULT_MIN_SIMILARITY})",
    )
    group.add_argument(
        "--min-inliers",
        type=int,
        default=DEFAULT_MIN_INLIERS,
        help="embedding stage: min SIFT keypoints of the two grey thumbnails that one rotation / zoom / "
        f"shift (maybe mirrored) maps onto each other, confirming a candidate (default {DEFAULT_MIN_INLIERS})",
    )
    group.add_argument(
        "--embedding-cache",
        default=None,
        help="folder caching embeddings by file SHA-256 (default $CIT_EMBEDDING_CACHE or "
        "~/.cache/cit/embeddings)",
    )


def add_parser(subparsers) -> None:
    """Add the ``audit`` sub-command."""

    a = subparsers.add_parser(
        "audit",
        help="audit a data set: class balance, image properties, unreadable files, train/test leakage",
        description=(
            "Audit a datalist (or a folder / CSV / MedMNIST .npz, turned into one with `cit datalist` rules and "
            "options): class balance per split; image format, colour mode, channels as stored, bit depth, size "
            "(W x H), DICOM modality / manufacturer per split and class, flagging any that predicts the label "
            "(confound); unreadable files; leakage between splits (shared patients, exact and near-duplicate "
            "images, each near-duplicate confirmed on the pixels). Writes audit.json, audit.md and a regrouped "
            "datalist that moves only the images of patients / duplicate clusters spanning splits."
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
    _add_phash_options(a)
    _add_embedding_options(a)
    a.add_argument("--workers", type=int, default=1, help="processes reading images (default 1)")
    a.add_argument("--no-regroup", action="store_true", help="do not write datalist_regrouped.json")
    a.add_argument("--seed", type=int, default=0, help="breaks ties when the regrouped split moves a cluster")
    a.add_argument("--strict", action="store_true", help="exit with status 1 when leakage is found")
    add_source_options(a)
    a.set_defaults(func=_audit)
