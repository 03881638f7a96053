"""Near-duplicate pairs that `cit audit` names, against a ground truth of groups (e.g. LC25000's
source tiles): recall of same-group pairs, precision of the named pairs. Prints one JSON object.

    python scripts/near_duplicate_truth.py --folder ../shared/data/lc25000_lung_224 \
        --truth ../shared/data/lc25000_lung_224/source_tiles.csv --group-column source_tile

Every image is put in one split, so each pair the audit confirms (exact, hash stage, embedding
stage) is counted once, whichever split it would fall in. ``--dev-folder lung_aca`` also scores the
pairs inside that subfolder (where a rule is chosen) apart from those with neither image in it (held
out): a threshold chosen on the first is then measured on the second.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import time
from collections import defaultdict
from pathlib import Path


def named_pairs(report: dict, min_inliers: int = 0) -> dict[tuple[str, str], int | None]:
    """Every pair the audit named -> its keypoint inliers (None outside the embedding stage);
    embedding-stage pairs only with at least ``min_inliers``."""
    pairs = {}
    for record in (
        report["within_split_pairs"]
        + report["leakage"]["exact_duplicates"]
        + report["leakage"]["near_duplicates"]
    ):
        if record.get("stage") == "embedding" and record["keypoint_inliers"] < min_inliers:
            continue
        pairs[tuple(sorted((record["a"]["image"], record["b"]["image"])))] = record.get("keypoint_inliers")
    return pairs


def score(
    report: dict, root: Path, truth: dict[str, str], min_inliers: int = 0, keep=lambda image: True
) -> dict:
    """Recall and precision of the named pairs whose two images both pass ``keep``."""
    groups = defaultdict(list)
    for name, group in truth.items():
        groups[group].append(str(root / name))
    true = {tuple(sorted(p)) for members in groups.values() for p in itertools.combinations(members, 2)}
    true = {p for p in true if keep(p[0]) and keep(p[1])}
    inliers = {p: n for p, n in named_pairs(report, min_inliers).items() if keep(p[0]) and keep(p[1])}
    named = set(inliers)
    hit = named & true
    stages = defaultdict(int)
    for record in report["within_split_pairs"]:
        if record.get("stage") != "embedding" or record["keypoint_inliers"] >= min_inliers:
            stages[record.get("stage", record["kind"])] += 1
    return {
        "true_pairs": len(true),
        "named_pairs": len(named),
        "true_pairs_named": len(hit),
        "recall": round(len(hit) / max(len(true), 1), 3),
        "precision": round(len(hit) / max(len(named), 1), 3),
        "false_pairs": sorted(([*p, inliers[p]] for p in named - true), key=lambda r: (-(r[2] or 0), r)),
        "named_by_stage": dict(stages),
    }


def main() -> None:
    from toolkit.cli.audit import read_image
    from toolkit.data.audit import audit_datalist
    from toolkit.data.audit.embeddings import DEFAULT_MIN_INLIERS
    from toolkit.data.files import find_image_files
    from toolkit.networks.embeddings import ImageEmbedder

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", required=True)
    parser.add_argument("--truth", required=True, help="CSV with a file column (relative to --folder)")
    parser.add_argument("--group-column", default="source_tile")
    parser.add_argument("--embedding-cache", default=None)
    parser.add_argument("--no-embeddings", action="store_true")
    parser.add_argument("--min-inliers", type=int, default=DEFAULT_MIN_INLIERS)
    parser.add_argument(
        "--also-at", default="", help="more keypoint thresholds to score, e.g. 4,5 (>= --min-inliers)"
    )
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--dev-folder", default=None, help="also score inside this subfolder and outside it")
    args = parser.parse_args()
    root = Path(args.folder).resolve()
    with open(args.truth, newline="") as f:
        truth = {row["file"]: row[args.group_column] for row in csv.DictReader(f)}
    files = [str(p) for p in find_image_files(root)]
    doc = {"labels": ["x"], "all": [{"image": p, "label": 0} for p in files]}
    started = time.perf_counter()
    report = audit_datalist(
        doc,
        read_image,
        embedder=None if args.no_embeddings else ImageEmbedder(),
        embedding_cache=args.embedding_cache,
        min_inliers=args.min_inliers,
        workers=args.workers,
    )
    result = score(report, root, truth, args.min_inliers)
    for extra in (int(t) for t in args.also_at.split(",") if t.strip()):
        scored = score(report, root, truth, extra)
        result[f"at_min_inliers_{extra}"] = {
            k: scored[k] for k in ("named_pairs", "true_pairs_named", "recall", "precision")
        }
    if args.dev_folder:
        dev = str(root / args.dev_folder) + "/"
        subsets = {"dev": lambda p: p.startswith(dev), "held_out": lambda p: not p.startswith(dev)}
        thresholds = [args.min_inliers] + [int(t) for t in args.also_at.split(",") if t.strip()]
        for subset, keep in subsets.items():
            result[subset] = {
                f"at_min_inliers_{t}": {
                    k: v
                    for k, v in score(report, root, truth, t, keep).items()
                    if k in ("true_pairs", "named_pairs", "true_pairs_named", "recall", "precision")
                }
                for t in thresholds
            }
    result.update(
        images=len(files),
        seconds=round(time.perf_counter() - started, 1),
        embedding_stage=report["settings"]["embedding_stage"],
    )
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
