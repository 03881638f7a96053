"""`cit verify-bundle`: the MONAI model zoo's bundle checks on a bundle folder."""

from __future__ import annotations

import argparse
import json
import sys

CHECK_NAMES = ("files", "large_files", "version", "metadata", "properties", "net_in_out", "torchscript")


def parse_override(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` -> ``(KEY, VALUE)``, VALUE parsed as JSON when it parses (``32``, ``null``,
    ``[1, 2]``), else kept as a string (a path)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def _verify(args: argparse.Namespace) -> int:
    from toolkit.bundle.verify import verify_bundle

    if not args.verbose:
        _quiet_monai()
    try:
        results = verify_bundle(
            args.folder, overrides=dict(args.override or []), checks=args.check, trust=args.trust_bundle
        )
    except (NotADirectoryError, ValueError) as err:
        print(f"cit verify-bundle: {err}", file=sys.stderr)
        return 1
    for result in results:
        print(result.line(), flush=True)
    return 0 if all(r.ok for r in results) else 1


def _quiet_monai() -> None:
    """MONAI's bundle functions log their inputs and their findings on stdout; the command's own
    lines state every finding, so keep MONAI's errors only."""
    import logging

    import monai.bundle  # noqa: F401  (creates its loggers)

    for name in list(logging.root.manager.loggerDict):
        if name.startswith(("monai.bundle", "monai.apps")):
            logging.getLogger(name).setLevel(logging.ERROR)


def add_parser(subparsers) -> None:
    """Add the ``verify-bundle`` sub-command."""
    p = subparsers.add_parser(
        "verify-bundle",
        help="run the MONAI model zoo's bundle checks on a bundle folder (this runs the bundle's code)",
        description=(
            "Checks, in order: files (configs/metadata.json, LICENSE, docs/README.md, configs/inference.json), "
            "large_files (entries of large_files.yml: path inside the bundle, http(s)/file URL, hash of a "
            "file present; offline), version (in metadata.json's changelog), metadata (the metadata schema, "
            "offline), properties (MONAI's workflow properties of train.json, inference.json, evaluate.json), "
            "net_in_out (verify_net_in_out against network_data_format), torchscript (ckpt_export into a "
            "temporary folder; an untrained bundle with random weights). Prints 'ok <check>' or "
            "'FAIL <check>: <reason>' per check; exit 0 when all pass, 1 otherwise. "
            "WARNING: from 'properties' on, the bundle's configs are evaluated, which runs the bundle's code "
            "(Python expressions, any class it names) as monai.bundle does: verify only bundles you would run. "
            "The workflows build their datasets and networks and write where their configs say (output_dir): "
            "use --override to point them at small data and a scratch folder."
        ),
    )
    p.add_argument("folder", help="bundle folder (e.g. bundles/resnet18_brain_ct or an exported bundle)")
    p.add_argument(
        "--override",
        action="append",
        type=parse_override,
        metavar="KEY=VALUE",
        help="config id and value for every evaluated config (repeatable; VALUE is JSON when it "
        "parses, else a string), e.g. --override dataset_dir=data/datalist.json "
        "--override output_dir=/tmp/out --override cache_rate=0; prefix KEY with train:, "
        "inference: or evaluate: for one config only (--override inference:dataset_dir=scans/)",
    )
    p.add_argument(
        "--check", action="append", choices=CHECK_NAMES, help="run only this check (repeatable; default all)"
    )
    p.add_argument(
        "--trust-bundle",
        action="store_true",
        help="evaluate a foreign bundle's configs even if they hold code this toolkit's bundles do not",
    )
    p.add_argument("--verbose", action="store_true", help="keep MONAI's INFO log lines")
    p.set_defaults(func=_verify)
