"""Linear probe: a logistic regression on frozen ImageNet features, per datalist; prints JSON.

The classic transfer-learning baseline (and the one the LC25000-clean authors report: ImageNet
ResNet-18 features + a linear classifier). With two datalists of one data set, one split at random
and one keeping augmented copies together (`cit datalist --group-column source_tile`), the gap
between their test accuracies is what the leak of copies across the split is worth::

    cit datalist DATA/lc25000_lung_224/source_tiles.csv --image-column file --label-column label \\
        --ratios 70:15:15 --seed 0 --out random.json
    cit datalist ... --group-column source_tile --out grouped.json
    python scripts/linear_probe.py random.json grouped.json

Features: ``toolkit.networks.embeddings.ImageEmbedder`` (pooled EfficientNet-Lite0 features from its
ImageNet weights, averaged over the four flips, L2-normalised: the audit's embedding), on images
read by the toolkit's reader. The regularisation C is chosen by validation accuracy (log grid),
and the model fitted on training with it is tested; the test split chooses nothing. 95 % intervals:
bootstrap over the test images' groups (``group``, e.g. source tile or patient; else images).
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

from toolkit.bundle.datalists import read_pixels  # noqa: E402
from toolkit.data import load_datalist  # noqa: E402
from toolkit.data.audit.embeddings import embedding_thumb  # noqa: E402
from toolkit.evaluation.bootstrap import bootstrap_intervals, fast_classification_metrics  # noqa: E402
from toolkit.networks.embeddings import DEFAULT_EMBEDDER, ImageEmbedder  # noqa: E402

C_GRID = tuple(10.0**k for k in range(-2, 4))
SPLITS = ("training", "validation", "test")
BATCH = 32


def embed_all(paths: list[str], embedder: ImageEmbedder) -> dict[str, np.ndarray]:
    """Features of each readable 2D image (read once, in batches); the others are named on stderr
    and left out of every split."""
    features = {}
    for start in range(0, len(paths), BATCH):
        chunk, thumbs = [], []
        for path in paths[start : start + BATCH]:
            try:
                thumb = embedding_thumb(read_pixels(path), embedder.size)
            except (OSError, ValueError) as err:
                thumb = None
                print(f"skipped {path}: {err}", file=sys.stderr)
            if thumb is not None:
                chunk.append(path)
                thumbs.append(thumb)
        if chunk:
            features.update(zip(chunk, embedder(np.stack(thumbs)), strict=True))
    return features


def probe(doc: dict, features: dict[str, np.ndarray], seed: int) -> dict:
    """Fit on training with C chosen on validation; test accuracy / macro AUROC with 95 % intervals."""
    from sklearn.linear_model import LogisticRegression

    items = {s: [i for i in doc[s] if i["image"] in features] for s in SPLITS}
    data = {
        s: (np.stack([features[i["image"]] for i in items[s]]), np.array([i["label"] for i in items[s]]))
        for s in SPLITS
    }

    fitted = {
        c: LogisticRegression(C=c, max_iter=5000, random_state=seed).fit(*data["training"]) for c in C_GRID
    }
    val_acc = {c: float(model.score(*data["validation"])) for c, model in fitted.items()}
    best = max(C_GRID, key=lambda c: (val_acc[c], -c))  # ties: the stronger regularisation
    x_test, y_test = data["test"]
    prob = fitted[best].predict_proba(x_test)
    names = list(doc["labels"])
    point = fast_classification_metrics(y_test, prob, names)
    groups = [i.get("group") or i["image"] for i in items["test"]]
    ci = bootstrap_intervals(
        lambda idx: fast_classification_metrics(y_test[idx], prob[idx], names), len(y_test), groups, seed=seed
    )
    metric = {}
    for key, name in ((("accuracy",), "accuracy"), (("roc_auc_ovr_macro",), "auroc_macro")):
        metric[name] = round(point[key], 4)
        metric[f"{name}_95ci"] = [round(ci[key]["low"], 4), round(ci[key]["high"], 4)]
    return {
        "images": {s: len(items[s]) for s in SPLITS},
        "images_left_out": sum(len(doc[s]) - len(items[s]) for s in SPLITS),
        "group_column": doc.get("group_column"),
        "C": best,
        "validation_accuracy_by_C": {str(c): round(a, 4) for c, a in val_acc.items()},
        **metric,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("datalists", nargs="+", type=Path, help="datalist JSON files made by `cit datalist`")
    parser.add_argument("--arch", default=DEFAULT_EMBEDDER, help="timm network with offline ImageNet weights")
    parser.add_argument("--seed", type=int, default=0, help="logistic regression and bootstrap seed")
    args = parser.parse_args()
    logging.disable(logging.INFO)  # keep stdout to the JSON result
    docs = {path: load_datalist(path) for path in args.datalists}
    paths = sorted({i["image"] for doc in docs.values() for s in SPLITS for i in doc[s]})
    embedder = ImageEmbedder(args.arch)
    start = time.perf_counter()
    features = embed_all(paths, embedder)
    embed_s = time.perf_counter() - start
    result = {
        "benchmark": "linear probe on frozen ImageNet features",
        "features": f"{args.arch} pooled, flip-averaged, L2-normalised, {embedder.size} px",
        "seed": args.seed,
        "images_embedded": len(paths),
        "embedding_seconds": round(embed_s, 1),
        "datalists": {str(p): probe(doc, features, args.seed) for p, doc in docs.items()},
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
