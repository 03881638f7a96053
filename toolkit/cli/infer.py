"""`cit infer`: batch inference of a bundle over a folder (also under ``torchrun ... -m toolkit infer``)."""

from __future__ import annotations

import argparse
import json
import logging
import pickle
import sys

EPILOG = """\
outputs (all inside --output; nothing is written anywhere else):
  predictions.csv / predictions.jsonl   one row per input: path, DICOM UIDs, status (ok | error |
                                        skipped), reason, pred, pred_name, prob_<class>, model name /
                                        version / sha256; CSV cells starting with = + - @ get a ' prefix
  parts/predictions.part<rank>.jsonl    journal appended per batch; a rerun skips inputs found here
  run.json                              what decides the rows (weights sha256, config, options)
  sr/<StudyInstanceUID>.dcm             DICOM Comprehensive 3D SR per study (--dicom-sr); it carries the
                                        patient and study attributes of the images unless --sr-anonymise
  gradcam/<hash>_<name>.png             Grad-CAM overlays (--gradcam), named in the row's gradcam column
  pseudonym.key                         key of --pseudonymise-paths (keep it; do not share it)
  pacs/cache/, pacs/sr-stored.json      instances retrieved from a PACS (deleted after the run unless
                                        --keep-cache); the SRs stored by --store-sr
exit codes:
  0  every input processed (ok or skipped)
  1  the run failed (bundle, weights or --input missing, a process died before all rows were written)
  2  invalid command line
  3  some inputs failed (rows with status error)
  4  another run is writing to --output
  5  --output holds results of another model or other options (--restart discards them)
  6  no input found (empty or image-less folder, e.g. an unmounted share); nothing is written
  7  every row written, but some DICOM SR is not stored in the PACS (--store-sr); rerun to send it
scale-out:
  torchrun --nproc_per_node N -m toolkit infer ...   shards inputs by rank; rank 0 merges
"""


# Why a run fails as a whole: a missing or unreadable bundle, input or weights (OSError), a bundle config
# MONAI cannot evaluate (RuntimeError, KeyError for a missing id), an invalid option value (ValueError).
RUN_ERRORS = (OSError, RuntimeError, KeyError, ValueError)


def _csv_list(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def _override(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected ID=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add `cit infer` to the `cit` command line."""
    parser = subparsers.add_parser(
        "infer",
        help="classify every image below a folder with a bundle (resumable, CSV + DICOM SR)",
        description="Classify every DICOM (found by content), NIfTI, PNG and JPEG below --input with the "
        "bundle's inference.json preprocessing, network and postprocessing.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--bundle", required=True, help="bundle folder (holds configs/inference.json)")
    parser.add_argument(
        "--input",
        required=True,
        help="folder (searched recursively), single file, or a PACS: dicomweb+http(s)://HOST:PORT/PATH or "
        "dimse://AET@HOST:PORT (see PACS options)",
    )
    parser.add_argument("--output", required=True, help="folder for predictions.csv and the other outputs")
    _add_model_options(parser)
    _add_filter_options(parser)
    _add_output_options(parser)
    _add_pacs_options(parser)
    _add_watch_options(parser)
    parser.set_defaults(func=run, quiet_log=True)  # WARNING unless --verbose: no line per input
    return parser


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    model = parser.add_argument_group("model options", "what runs the bundle's network, and where")
    model.add_argument(
        "--ckpt-path", default=None, help="model weights to use instead of the bundle's ckpt_path"
    )
    model.add_argument(
        "--trust-bundle",
        action="store_true",
        help="run a bundle folder from elsewhere even if its configs hold code this toolkit's bundles do "
        "not (a bundle folder is code: give this only for a source you would run a program from)",
    )
    model.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default="auto",
        help="auto: the GPU when there is one (default)",
    )
    model.add_argument(
        "--backend",
        choices=["auto", "pytorch", "onnxruntime", "onnxruntime-int8"],
        default="auto",
        help="what runs the network. auto (default): on a CPU, ONNX Runtime on model.int8.onnx when `cit export "
        "--format onnx --int8` made it from these very weights and it passed its accuracy check against fp32, "
        "else on model.onnx when exported from these weights (1.3-2.4x faster here), else PyTorch",
    )
    model.add_argument(
        "--precision",
        choices=["fp32", "bf16"],
        default="fp32",
        help="of the pytorch backend: bf16 runs it under CPU bf16 autocast, only on a CPU with native bf16 "
        "(oneDNN: AVX512-BF16 / AMX) and for weights whose `cit export --format bf16-check` passed",
    )
    model.add_argument("--batch-size", type=int, default=16)
    model.add_argument(
        "--workers", type=int, default=2, help="data loader processes (0: load in the main process)"
    )
    model.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads for the network on CPU (0: torch's default); on a busy or small "
        "machine 1 thread beside the loader workers can be much faster",
    )
    model.add_argument(
        "--set",
        dest="overrides",
        action="append",
        type=_override,
        default=[],
        metavar="ID=VALUE",
        help="override a bundle config id (JSON value), like monai.bundle run --ID VALUE",
    )


def _add_filter_options(parser: argparse.ArgumentParser) -> None:
    filters = parser.add_argument_group(
        "input filters", "which DICOM inputs are classified (others: skipped rows)"
    )
    filters.add_argument(
        "--modality", type=_csv_list, default=(), help="only these DICOM modalities, e.g. CR,DX"
    )
    filters.add_argument(
        "--sop-class",
        type=_csv_list,
        default=(),
        help="only these SOP classes (UIDs or keywords such as CTImageStorage)",
    )
    filters.add_argument("--body-part", type=_csv_list, default=(), help="only these BodyPartExamined values")
    filters.add_argument(
        "--frames",
        choices=["reject", "each"],
        default="reject",
        help="multi-frame DICOM with a 2D model: one error row (reject, default) or every frame",
    )


def _add_output_options(parser: argparse.ArgumentParser) -> None:
    outputs = parser.add_argument_group("output options", "what is written besides predictions.csv / .jsonl")
    outputs.add_argument(
        "--include-patient-info",
        action="store_true",
        help="add patient_id and patient_name columns (never written to logs)",
    )
    outputs.add_argument("--dicom-sr", action="store_true", help="also write a DICOM SR per study")
    outputs.add_argument("--gradcam", action="store_true", help="also write Grad-CAM overlays as PNG")
    outputs.add_argument("--retry-errors", action="store_true", help="on rerun, process failed inputs again")
    outputs.add_argument(
        "--restart",
        action="store_true",
        help="discard the results already in --output (e.g. of another model) and start afresh",
    )
    outputs.add_argument(
        "--pseudonymise-paths",
        action="store_true",
        help="write a keyed hash (HMAC-SHA256, key in --output/pseudonym.key) of each input's "
        "relative path instead of the path, in every output",
    )
    outputs.add_argument(
        "--sr-anonymise",
        action="store_true",
        help="DICOM SR without patient / study attributes (name, ID, birth date, accession ...)",
    )
    outputs.add_argument("--no-progress", action="store_true", help="no progress bar")
    outputs.add_argument(
        "--verbose", action="store_true", help="log each failed input (paths may identify patients)"
    )


def _add_watch_options(parser: argparse.ArgumentParser) -> None:
    watch = parser.add_argument_group(
        "watch options",
        "--watch: classify files as they arrive in the --input folder, until SIGTERM or Ctrl-C (exit 0); "
        "a file is read once its size and mtime stay the same for --settle-seconds. With a DICOMweb --input, "
        "QIDO-RS is polled for the query's studies, each retrieved once its instance count stays the same "
        "for --settle-seconds",
    )
    watch.add_argument(
        "--watch", action="store_true", help="watch --input (a folder or a DICOMweb PACS) for new inputs"
    )
    watch.add_argument("--poll-seconds", type=float, default=2.0, help="how often the folder is listed")
    watch.add_argument(
        "--settle-seconds",
        type=float,
        default=5.0,
        help="how long a file (a PACS study: its instance count) must stay unchanged before it is read",
    )


def _add_pacs_options(parser: argparse.ArgumentParser) -> None:
    pacs = parser.add_argument_group(
        "PACS options",
        "--input dicomweb+http(s)://... (or dimse://AET@HOST:PORT: C-FIND, C-GET as AE title $CIT_PACS_AET, "
        "default CIT): QIDO-RS finds the studies (--modality filters their instances), WADO-RS "
        "retrieves them into --output/pacs/cache. Credentials: CIT_PACS_AUTH or --pacs-auth-file holding "
        "user:password or 'Bearer <token>', never the command line",
    )
    pacs.add_argument("--study-uid", type=_csv_list, default=(), help="only these StudyInstanceUIDs")
    pacs.add_argument("--study-date", default="", help="YYYYMMDD or a range YYYYMMDD-YYYYMMDD")
    pacs.add_argument("--accession", default="", help="only the study with this AccessionNumber")
    pacs.add_argument(
        "--store-sr",
        default=None,
        metavar="URL",
        help="send each study's DICOM SR (implies --dicom-sr) to dicomweb+http(s)://... (STOW-RS) or "
        "dimse://AET@HOST:PORT (C-STORE); a "
        "report not stored stays in sr/ and is sent by the next run (exit code 7)",
    )
    pacs.add_argument("--keep-cache", action="store_true", help="keep the retrieved instances after the run")
    pacs.add_argument("--pacs-cache-gb", type=float, default=20.0, help="most the cache may hold (GiB)")
    pacs.add_argument("--pacs-auth-file", default=None, help="file holding the PACS credentials")
    pacs.add_argument("--pacs-ca-bundle", default=None, help="CA certificates to verify the PACS's TLS with")
    pacs.add_argument("--pacs-timeout", type=float, default=60.0, help="seconds per PACS request")


def _pacs_options(args: argparse.Namespace):
    """``PacsOptions`` when a PACS is the input or the destination, else None."""
    from toolkit.inference.pacs.common import PacsOptions, StudyQuery, is_pacs_url

    query = StudyQuery(args.study_uid, args.modality, args.study_date, args.accession)
    if not is_pacs_url(args.input) and (query.study_uids or query.study_date or query.accession):
        raise ValueError(
            "--study-uid, --study-date and --accession query a PACS: --input dicomweb+... or dimse://"
        )
    if not is_pacs_url(args.input) and not args.store_sr:
        return None
    return PacsOptions(
        query=query,
        store_sr=args.store_sr,
        keep_cache=args.keep_cache,
        cache_max_bytes=int(args.pacs_cache_gb * 2**30),
        auth_file=args.pacs_auth_file,
        ca_bundle=args.pacs_ca_bundle,
        timeout=args.pacs_timeout,
    )


def _watch(options, args: argparse.Namespace, pacs) -> int:
    """`cit infer --watch`: a local folder or a DICOMweb PACS; no DICOM SR (a watched study keeps growing)."""
    from toolkit.inference.pacs.common import is_dicomweb_url, is_dimse_url
    from toolkit.inference.runner import EXIT_USAGE
    from toolkit.inference.watch import WatchOptions, watch_folder

    if options.dicom_sr or args.store_sr or is_dimse_url(options.input):
        print(
            "cit infer: --watch takes a local folder or a DICOMweb PACS (not DIMSE) and writes no DICOM SR "
            "(no --dicom-sr or --store-sr)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if not (args.poll_seconds > 0 and args.settle_seconds >= 0):
        print("cit infer: --poll-seconds must be > 0 and --settle-seconds >= 0", file=sys.stderr)
        return EXIT_USAGE
    watch = WatchOptions(args.poll_seconds, args.settle_seconds)
    if is_dicomweb_url(options.input):
        from toolkit.inference.pacs.watch import watch_pacs

        return watch_pacs(options, pacs, watch)
    return watch_folder(options, watch)


def run(args: argparse.Namespace) -> int:
    """Entry point of `cit infer`; returns the exit code documented in the epilog."""
    from toolkit.inference.discovery import DicomFilters
    from toolkit.inference.runner import EXIT_RUN_FAILED, EXIT_USAGE, InferenceOptions, run_inference

    if args.pseudonymise_paths and args.include_patient_info:
        print(
            "cit infer: --pseudonymise-paths and --include-patient-info contradict each other; give one",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if args.verbose:  # also each failed input's traceback (toolkit.inference logs them at debug level)
        logging.getLogger("toolkit.inference").setLevel(logging.DEBUG)
    options = InferenceOptions(
        bundle=args.bundle,
        input=args.input,
        output=args.output,
        ckpt_path=args.ckpt_path,
        device=args.device,
        batch_size=args.batch_size,
        workers=args.workers,
        threads=args.threads,
        filters=DicomFilters(args.modality, args.sop_class, args.body_part),
        frames=args.frames,
        include_patient_info=args.include_patient_info,
        dicom_sr=args.dicom_sr,
        gradcam=args.gradcam,
        retry_errors=args.retry_errors,
        restart=args.restart,
        pseudonymise_paths=args.pseudonymise_paths,
        sr_anonymise=args.sr_anonymise,
        progress=not args.no_progress,
        verbose=args.verbose,
        overrides=dict(args.overrides),
        backend=args.backend,
        precision=args.precision,
        trust_bundle=args.trust_bundle,
    )
    try:
        pacs = _pacs_options(args)
        if args.watch:
            return _watch(options, args, pacs)
        if pacs is not None:
            from toolkit.inference.pacs.run import run_with_pacs

            return run_with_pacs(options, pacs)
        return run_inference(options).exit_code
    except pickle.UnpicklingError:  # torch.load(weights_only=True) refused objects or code in a weights file
        print(
            "cit infer: failed: a weights file holds pickled objects or code, which is never loaded "
            "(only tensors are); if it is yours, save it again with torch.save(model.state_dict(), path)",
            file=sys.stderr,
        )
        return EXIT_RUN_FAILED
    except RUN_ERRORS as exc:  # a clear one-line message instead of a traceback; a bug keeps its traceback
        print(f"cit infer: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        if args.verbose:
            raise
        return EXIT_RUN_FAILED
