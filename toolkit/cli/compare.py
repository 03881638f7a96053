"""`cit compare`: several bundles on one split and one test set, in one table with CIs and paired tests."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from toolkit.cli.datalist import add_source_options, fail, source_options

# what a bad command line or input raises (a one-line message naming the file or option)
BAD_INPUT = (ValueError, OSError, KeyError)

EPILOG = """\
examples:
  cit compare --dataset-dir ../shared/data/kermany_cxr_224 --out runs/compare \\
      --model resnet18_brain_ct --model r50=resnet50_pneumonia -- --max_epochs 2 --image_size 64
  cit compare --dataset-dir labels.csv --out runs/compare --model resnet18_brain_ct \\
      --trained old=runs/earlier/runs/resnet18_brain_ct/models --set resnet18_brain_ct:learning_rate=0.001

Everything after `--` is passed to every bundle's training run (and, for the ids its evaluate.json
defines, e.g. --image_size or --batch_size, to its evaluation). The split is built once into
<out>/datalist.json; every model must have been trained on it (an already-trained model is refused
otherwise). An override may name an earlier --model's weights as {model:NAME}, e.g. a distillation
student's --set 'student:teacher_ckpt={model:teacher}' (models run in the order given).
Exit status: 0 every model compared, 3 some failed (listed in the table), 1 none could be scored,
2 bad command line or input.
"""


def bundle_folder(given: str) -> Path:
    """A bundle folder from a path or a bundle name under ./bundles or this source tree's bundles/."""
    candidates = [
        Path(given),
        Path.cwd() / "bundles" / given,
        Path(__file__).resolve().parents[2] / "bundles" / given,
    ]
    for path in candidates:
        if (path / "configs" / "train.json").is_file():
            return path.resolve()
    raise FileNotFoundError(
        f"no bundle {given!r}: looked for configs/train.json in " + ", ".join(map(str, candidates))
    )


def model_specs(args: argparse.Namespace) -> list:
    """``ModelSpec`` per --model / --trained, with the --set overrides of each."""
    from toolkit.bundle.description import load_model_info
    from toolkit.studies.compare import ModelSpec, parse_overrides

    specs = []
    for given in args.model or []:
        name, _, bundle = given.rpartition("=")
        folder = bundle_folder(bundle)
        specs.append(ModelSpec(name or folder.name, folder))
    for given in args.trained or []:
        name, sep, paths = given.partition("=")
        if not sep or not name:
            raise ValueError(f"--trained {given!r}: expected NAME=CKPT_DIR or NAME=CKPT_DIR,OUTPUT_DIR")
        ckpt, _, output = paths.partition(",")
        ckpt_dir = Path(ckpt).expanduser().resolve()
        info = load_model_info(ckpt_dir)
        if not info.bundle_name:
            raise ValueError(f"{ckpt_dir}/model_info.json names no bundle to evaluate the model with")
        specs.append(
            ModelSpec(
                name,
                bundle_folder(info.bundle_name),
                ckpt_dir,
                Path(output).expanduser().resolve() if output else None,
            )
        )
    by_name = {s.name: s for s in specs}
    for given in args.set or []:
        name, sep, assignment = given.partition(":")
        key, eq, value = assignment.partition("=")
        if not sep or not eq or not key:
            raise ValueError(f"--set {given!r}: expected NAME:KEY=VALUE")
        if name not in by_name:
            raise ValueError(f"--set {given!r}: no model named {name!r} (models: {', '.join(by_name)})")
        by_name[name].overrides += parse_overrides([f"--{key}", value])
    return specs


def _command_line() -> str | None:
    """The command as typed, for comparison.json (None when not run from the command line)."""
    return shlex.join(["cit", *sys.argv[1:]]) if sys.argv[1:2] == ["compare"] else None


def _compare(args: argparse.Namespace) -> int:
    from toolkit.studies.compare import compare_bundles

    try:
        specs = model_specs(args)
        options = {"ratios": args.ratios, "val_fraction": args.val_fraction, **source_options(args)}
        summary = compare_bundles(
            specs,
            args.dataset_dir,
            args.out,
            seed=args.seed,
            split_options=options,
            overrides=args.overrides,
            reuse=args.reuse,
            n_resamples=args.n_resamples,
            rank_by=args.rank_by,
            alpha=args.alpha,
            threshold=args.threshold,
            command_line=_command_line(),
        )
    except BAD_INPUT as err:
        return fail("compare", err)
    print(summary["files"]["markdown"].read_text(encoding="utf-8"))
    for kind, path in summary["files"].items():
        print(f"{kind}: {path}")
    failed = [r for r in summary["rows"] if r["status"] != "ok"]
    if summary["comparison"] is None:
        return 1
    return 3 if failed else 0


def add_parser(subparsers) -> None:
    """Add the ``compare`` sub-command."""
    p = subparsers.add_parser(
        "compare",
        help="train / evaluate several bundles on one split; table with 95%% CIs and paired tests",
        description=(
            "Build one patient-grouped split, train each --model bundle on it (or take --trained models that were "
            "trained on it), evaluate all on the same test set, and write <out>/comparison.md, .csv and .json: "
            "accuracy, macro precision / recall / F1 and AUROC with bootstrap 95% CIs (by patient where ids "
            "exist), and the best model tested against each other one (McNemar for accuracy; DeLong or paired "
            "bootstrap for AUROC; Holm-adjusted). A model that fails is a row with its error; the others go on."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--dataset-dir",
        required=True,
        help="the data: folder, label file, DICOM folder, .npz or a datalist .json (see `cit datalist`)",
    )
    p.add_argument("--out", required=True, help="output folder (split, runs, comparison files)")
    p.add_argument(
        "--model",
        action="append",
        metavar="[NAME=]BUNDLE",
        help="a bundle (folder or name under bundles/) to train; repeat for each model",
    )
    p.add_argument(
        "--trained",
        action="append",
        metavar="NAME=CKPT_DIR[,OUTPUT_DIR]",
        help="an already-trained model (its models/ folder; OUTPUT_DIR holds its training split, "
        "default CKPT_DIR/../output); evaluated only",
    )
    p.add_argument(
        "--set",
        action="append",
        metavar="NAME:KEY=VALUE",
        help="a bundle override for one model only, e.g. r18:learning_rate=0.001",
    )
    p.add_argument("--seed", type=int, default=0, help="split seed and bootstrap seed (default 0)")
    p.add_argument("--ratios", default=None, help="split ratios, e.g. training=0.7,validation=0.15,test=0.15")
    p.add_argument(
        "--val-fraction",
        type=float,
        default=0.15,
        help="validation carved from a published training split (default 0.15)",
    )
    p.add_argument(
        "--reuse",
        action="store_true",
        help="reuse a model / predictions of an earlier run into --out made by the same command, "
        "configs, toolkit code (below toolkit.inference) and weights",
    )
    p.add_argument("--n-resamples", type=int, default=1000, help="bootstrap resamples (default 1000)")
    p.add_argument(
        "--rank-by",
        choices=("auroc", "accuracy", "f1"),
        default="auroc",
        help="the metric that picks the best model (default auroc)",
    )
    p.add_argument("--alpha", type=float, default=0.05, help="significance level after Holm (default 0.05)")
    p.add_argument(
        "--threshold",
        type=float,
        default=0.5,
        help="multi-label decision threshold of a model without per-finding thresholds chosen on validation "
        "(recorded in its eval/metrics.json) (default 0.5)",
    )
    add_source_options(p)
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="-- --KEY VALUE",
        help="bundle overrides for every model's run, after `--`",
    )
    p.set_defaults(func=_compare)
