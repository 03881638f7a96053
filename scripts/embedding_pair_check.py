"""The pairs that the audit's embedding stage names beyond the hash rule, on a set without known
copies (Kermany, ChestX-ray14): how many, how many join two patients or two labels, and their
keypoint inliers, so each can be looked at. Prints one JSON object.

    python scripts/embedding_pair_check.py --labels ../shared/data/kermany_cxr_224/labels.csv \
        --label-column label --patient-column patient_id --group-column split --workers 2
    python scripts/embedding_pair_check.py --labels ../shared/data/chestxray14_64/labels.csv \
        --label-column finding_labels --patient-column patient_id --workers 2

Every image is put in one split, so every pair is counted once. ``--every 3`` takes every third
row (sorted by file name) where the keypoints of the whole set cost too much CPU. The audit runs with
``--min-inliers`` (default 3, below the stage's threshold), so the JSON shows how many pairs each
threshold would name (``named_at_min_inliers``); ``pairs`` lists them, most inliers first.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from collections import Counter
from pathlib import Path


def main() -> None:
    from toolkit.cli.audit import read_image
    from toolkit.data.audit import audit_datalist
    from toolkit.data.audit.registration import DEFAULT_MIN_INLIERS
    from toolkit.networks.embeddings import ImageEmbedder

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", required=True, help="CSV with a file column, relative to its folder")
    parser.add_argument("--label-column", required=True)
    parser.add_argument("--patient-column", required=True)
    parser.add_argument(
        "--group-column",
        default=None,
        help="patient ids are only unique inside a value of it (Kermany: split)",
    )
    parser.add_argument(
        "--every", type=int, default=1, help="only every n-th row, by file name (a CPU budget)"
    )
    parser.add_argument("--min-inliers", type=int, default=3)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--embedding-cache", default=None)
    args = parser.parse_args()
    root = Path(args.labels).resolve().parent
    with open(args.labels, newline="") as f:
        rows = sorted(csv.DictReader(f), key=lambda row: row["file"])[:: args.every]
    items = []
    for row in rows:
        patient = row[args.patient_column]
        if args.group_column:
            patient = f"{row[args.group_column]}/{patient}"
        items.append(
            {
                "image": str(root / row["file"]),
                "label": 0,
                "patient": patient,
                "finding": row[args.label_column],
            }
        )
    by_image = {it["image"]: it for it in items}
    doc = {"labels": ["x"], "all": [{"image": it["image"], "label": 0} for it in items]}
    started = time.perf_counter()
    report = audit_datalist(
        doc,
        read_image,
        embedder=ImageEmbedder(),
        min_inliers=args.min_inliers,
        workers=args.workers,
        embedding_cache=args.embedding_cache,
    )
    named = report["within_split_pairs"]
    stage_pairs = [r for r in named if r.get("stage") == "embedding"]
    pairs = []
    for r in sorted(stage_pairs, key=lambda r: -r["keypoint_inliers"]):
        a, b = by_image[r["a"]["image"]], by_image[r["b"]["image"]]
        pairs.append(
            {
                "a": str(Path(a["image"]).relative_to(root)),
                "b": str(Path(b["image"]).relative_to(root)),
                "same_patient": a["patient"] == b["patient"],
                "same_label": a["finding"] == b["finding"],
                "inliers": r["keypoint_inliers"],
                "similarity": r["embedding_similarity"],
                "transform": r["transform"],
            }
        )
    thresholds = sorted({args.min_inliers, 4, 5, 6, 8, DEFAULT_MIN_INLIERS, 10, 15, 20})
    result = {
        "labels": args.labels,
        "every": args.every,
        "images": len(items),
        "seconds": round(time.perf_counter() - started, 1),
        "named_by_hash_or_exact": sum(1 for r in named if r.get("stage") != "embedding"),
        "embedding_stage": report["settings"]["embedding_stage"],
        "named_at_min_inliers": {
            str(t): {
                "pairs": sum(1 for p in pairs if p["inliers"] >= t),
                "different_patients": sum(1 for p in pairs if p["inliers"] >= t and not p["same_patient"]),
                "different_labels": sum(1 for p in pairs if p["inliers"] >= t and not p["same_label"]),
            }
            for t in thresholds
            if t >= args.min_inliers
        },
        "inlier_histogram": dict(sorted(Counter(p["inliers"] for p in pairs).items())),
        "pairs": pairs,
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
