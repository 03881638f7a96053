"""Is one split's data shifted from another's? A classifier two-sample test per class; prints JSON.

For each class, a logistic regression on frozen ImageNet features (the linear probe's:
``scripts/linear_probe.py``) learns to tell that class's images of split A from its images of split B;
its out-of-fold AUROC is the test statistic (Lopez-Paz & Oquab, "Revisiting classifier two-sample
tests", ICLR 2017): 0.5 when the two are alike, towards 1 the more they differ. Folds and the 95 %
bootstrap interval keep a patient's images together (the datalist's ``patient_id`` or ``group``).
Class labels are used only to compare like with like; nothing is fitted to predict them.

    python scripts/shift_check.py runs/results/kermany_binary_lite0/datalist.json \\
        --pair training:test --pair training:validation

The second pair is the control: a validation split drawn from the training patients should score
about 0.5, which is why it cannot see a shift that the first pair shows.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from linear_probe import embed_all  # noqa: E402

from toolkit.data import load_datalist  # noqa: E402
from toolkit.evaluation.bootstrap import bootstrap_intervals  # noqa: E402
from toolkit.networks.embeddings import DEFAULT_EMBEDDER, ImageEmbedder  # noqa: E402

FOLDS = 5


def group_of(item: dict) -> str:
    return str(item.get("patient_id") or item.get("group") or item["image"])


def two_sample_auroc(x: np.ndarray, y: np.ndarray, groups: list[str], seed: int) -> dict:
    """Out-of-fold AUROC of a logistic regression telling y == 1 (split B) from y == 0 (split A)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedGroupKFold

    scores = np.zeros(len(y))
    folds = StratifiedGroupKFold(n_splits=FOLDS, shuffle=True, random_state=seed)
    for fit_idx, held_idx in folds.split(x, y, groups):
        # balanced weights: the two splits differ in size, and the statistic should not reward that
        model = LogisticRegression(max_iter=5000, class_weight="balanced", random_state=seed)
        scores[held_idx] = model.fit(x[fit_idx], y[fit_idx]).decision_function(x[held_idx])

    def auroc(idx: np.ndarray) -> dict:
        both_present = len(np.unique(y[idx])) == 2
        return {("auroc",): float(roc_auc_score(y[idx], scores[idx])) if both_present else None}

    ci = bootstrap_intervals(auroc, len(y), groups, seed=seed)[("auroc",)]
    return {
        "auroc": round(auroc(np.arange(len(y)))[("auroc",)], 4),
        "auroc_95ci": [None if ci[k] is None else round(ci[k], 4) for k in ("low", "high")],
    }


def compare(doc: dict, features: dict[str, np.ndarray], split_a: str, split_b: str, seed: int) -> dict:
    result = {}
    names = list(doc["labels"])
    for label, name in enumerate(names):
        items = {
            s: [i for i in doc[s] if i["label"] == label and i["image"] in features]
            for s in (split_a, split_b)
        }
        if min(len(items[split_a]), len(items[split_b])) < FOLDS:
            result[name] = {
                "images": {s: len(v) for s, v in items.items()},
                "skipped": f"fewer than {FOLDS} images",
            }
            continue
        both = items[split_a] + items[split_b]
        x = np.stack([features[i["image"]] for i in both])
        y = np.array([0] * len(items[split_a]) + [1] * len(items[split_b]))
        result[name] = {
            "images": {s: len(v) for s, v in items.items()},
            **two_sample_auroc(x, y, [group_of(i) for i in both], seed),
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("datalist", type=Path, help="a datalist JSON made by `cit datalist` (single-label)")
    parser.add_argument(
        "--pair",
        action="append",
        default=[],
        help="SPLIT_A:SPLIT_B to compare (repeatable; default training:test)",
    )
    parser.add_argument("--arch", default=DEFAULT_EMBEDDER, help="timm network with offline ImageNet weights")
    parser.add_argument("--seed", type=int, default=0, help="folds and bootstrap seed")
    args = parser.parse_args()
    logging.disable(logging.INFO)  # keep stdout to the JSON result
    doc = load_datalist(args.datalist)
    if doc.get("multi_label"):
        parser.error(f"{args.datalist}: a multi-label datalist has no single class to compare like with like")
    pairs = [tuple(p.split(":")) for p in args.pair or ["training:test"]]
    for pair in pairs:
        if len(pair) != 2 or any(s not in ("training", "validation", "test") for s in pair):
            parser.error(f"--pair {':'.join(pair)}: give two of training, validation, test as A:B")
    paths = sorted({i["image"] for pair in pairs for s in pair for i in doc[s]})
    embedder = ImageEmbedder(args.arch)
    start = time.perf_counter()
    features = embed_all(paths, embedder)
    result = {
        "benchmark": "classifier two-sample test per class (out-of-fold AUROC, 0.5 = no shift)",
        "datalist": str(args.datalist),
        "features": f"{args.arch} pooled, flip-averaged, L2-normalised, {embedder.size} px",
        "folds": FOLDS,
        "seed": args.seed,
        "images_embedded": len(features),
        "embedding_seconds": round(time.perf_counter() - start, 1),
        "pairs": {f"{a} vs {b}": compare(doc, features, a, b, args.seed) for a, b in pairs},
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
