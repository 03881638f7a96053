"""Benchmark of `cit infer` from a PACS (issue 23): instances/s over DICOMweb from a real Orthanc on
loopback against the same files from a local folder, in one run.

Writes N DICOM files with pydicom (16-bit CT, --size px, uncompressed, in --studies studies), starts its
own Orthanc (tests/inference/orthanc_local.py, as the PACS tests do: Debian's `orthanc` +
`orthanc-dicomweb`, installed with apt-get when missing and this is root), uploads them, then measures,
interleaved, with fresh output folders:

  folder     instances/s of `cit infer --input FOLDER` end to end (bundle loading, discovery, model, CSV)
  pacs       instances/s of `cit infer --input dicomweb+http://127.0.0.1:PORT/dicom-web` end to end (QIDO-RS
             query, WADO-RS retrieval into the cache, the same run on the cache, the cache deleted)
  retrieval  seconds of the query and retrieval alone (what the PACS run does before classifying; one
             WADO-RS request per series)

and prints JSON with pacs / folder against the issue's target (>= 0.8 on loopback). The network is the
bundle's with random weights at its training image size (speed does not depend on the weights).

    python scripts/bench_pacs.py --n 64 --size 512 --studies 4
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "inference"))  # the Orthanc of the PACS tests, their DICOM writer

import infer_helpers  # noqa: E402
from bench_infer import BUNDLE, cpu_flags  # noqa: E402
from infer_helpers import make_dicom, read_csv, write_tiny_checkpoint  # noqa: E402
from orthanc_local import PASSWORD, USER, running_orthanc, upload  # noqa: E402


def cit_infer(args: list[str], n: int) -> float:
    """Seconds of one `cit infer` (the command line's own path), checked to give ``n`` ok rows."""
    from toolkit.cli import main

    start = time.perf_counter()
    code = main(["infer", *args])
    seconds = time.perf_counter() - start
    rows = read_csv(Path(args[args.index("--output") + 1]) / "predictions.csv")
    assert code == 0 and len(rows) == n and {r["status"] for r in rows} == {"ok"}, (code, len(rows))
    return seconds


def retrieval(url: str, cache: Path) -> tuple[float, int]:
    """(seconds, bytes) of finding every study and retrieving its instances, as the PACS run does."""
    from toolkit.inference.pacs.common import PacsOptions, StudyQuery
    from toolkit.inference.pacs.dicomweb import DicomwebPacs

    start = time.perf_counter()
    pacs = DicomwebPacs(url, PacsOptions())
    done = pacs.retrieve(pacs.find_studies(StudyQuery()), cache, 1 << 40)
    assert not done.failures, done.failures
    return time.perf_counter() - start, done.bytes


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=64, help="DICOM instances")
    parser.add_argument("--size", type=int, default=512, help="rows and columns of each image")
    parser.add_argument("--studies", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the main process")
    parser.add_argument("--repeats", type=int, default=2, help="measure this many times, report the best")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ["CIT_PACS_AUTH"] = f"{USER}:{PASSWORD}"
    train = json.loads((BUNDLE / "configs" / "train.json").read_text())

    with tempfile.TemporaryDirectory(prefix="bench_pacs_") as tmp:
        tmp = Path(tmp)
        infer_helpers.IMAGE_SIZE = train["image_size"]  # read when called: the bundle's own input size
        ckpt = write_tiny_checkpoint(BUNDLE, tmp / "ckpt")
        for i in range(args.n):
            study = i % args.studies
            make_dicom(
                tmp / "in" / f"study{study}" / f"IM{i:04d}",
                study=f"bench{study}",
                series="s",
                index=i,
                seed=i,
                size=args.size,
            )
        files = sorted((tmp / "in").rglob("IM*"))
        common = [
            "--bundle",
            str(BUNDLE),
            "--ckpt-path",
            str(ckpt),
            "--device",
            "cpu",
            "--no-progress",
            "--batch-size",
            str(args.batch_size),
            "--workers",
            str(args.workers),
        ]
        runs = {"folder": [], "pacs": [], "retrieval": []}
        with running_orthanc(tmp / "orthanc") as orthanc:
            start = time.perf_counter()
            for path in files:
                upload(orthanc, path.read_bytes())
            upload_seconds = time.perf_counter() - start
            for r in range(args.repeats):  # interleaved: the machine's load changes from minute to minute
                out = ["--output", str(tmp / f"folder{r}")]
                runs["folder"].append(cit_infer([*common, "--input", str(tmp / "in"), *out], args.n))
                out = ["--output", str(tmp / f"pacs{r}")]
                runs["pacs"].append(cit_infer([*common, "--input", orthanc.dicomweb, *out], args.n))
                seconds, size = retrieval(orthanc.dicomweb, tmp / f"cache{r}")
                runs["retrieval"].append(seconds)
        data_bytes = sum(p.stat().st_size for p in files)

    folder, pacs, fetch = min(runs["folder"]), min(runs["pacs"]), min(runs["retrieval"])
    result = {
        "instances": args.n,
        "studies": args.studies,
        "size": args.size,
        "mib": round(data_bytes / 2**20, 1),
        "retrieved_mib": round(size / 2**20, 1),
        "image_size": train["image_size"],
        "batch_size": args.batch_size,
        "workers": args.workers,
        "threads": args.threads,
        "cpu_count": os.cpu_count(),
        "repeats": args.repeats,
        "upload_seconds": round(upload_seconds, 2),
        "all_runs_seconds": {k: [round(v, 2) for v in vals] for k, vals in runs.items()},
        "folder_instances_s": round(args.n / folder, 2),
        "pacs_instances_s": round(args.n / pacs, 2),
        "retrieval_seconds": round(fetch, 2),
        "retrieval_instances_s": round(args.n / fetch, 2),
        "retrieval_mib_s": round(size / 2**20 / fetch, 1),
        "pacs_over_folder": round(folder / pacs, 3),
        "target": {"pacs_over_folder": 0.8},
        "meets_target": folder / pacs >= 0.8,
        "cpu": cpu_flags(),
        "note": "best of the repeats; end to end including bundle loading; Orthanc on 127.0.0.1 shares the "
        "CPU with the run; read ratios more than values",
    }
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
