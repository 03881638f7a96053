"""Recompute test metrics from a bundle's predictions.csv, leaving out flagged images.

For data sets whose test split is known to share (near-)copies with training, e.g. the brain
tumour MRI set's ``near_duplicate_of_a_training_image`` column:

    python scripts/metrics_subset.py bundles/<name>/output/eval/predictions.csv \
        --flags ../shared/data/brain_tumor_mri_224/labels.csv --flag-column near_duplicate_of_a_training_image

Images are matched on their path relative to the flags CSV's folder (column ``--file-column``).
Prints JSON: accuracy, macro F1, per-class recall and the confusion matrix on all rows and on
the unflagged rows.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np

from toolkit.evaluation.metrics import classification_metrics


def _summary(rows: list[dict], class_names: list[str]) -> dict:
    y_true = np.array([int(r["label"]) for r in rows])
    y_prob = np.array([[float(r[f"prob_{c}"]) for c in class_names] for r in rows])
    m = classification_metrics(y_true, y_prob, class_names)
    return {
        "images": len(rows),
        "accuracy": round(m["accuracy"], 4),
        "macro_f1": round(m["macro"]["f1"], 4),
        "recall": {name: round(m["per_class"][name]["recall"], 4) for name in class_names},
        "confusion_matrix": m["confusion_matrix"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("predictions", type=Path)
    parser.add_argument(
        "--flags", type=Path, required=True, help="CSV with one row per image and a 0/1 flag column"
    )
    parser.add_argument("--flag-column", required=True)
    parser.add_argument("--file-column", default="file")
    args = parser.parse_args()

    with open(args.predictions, newline="") as f:
        rows = list(csv.DictReader(f))
    class_names = [c[len("prob_") :] for c in rows[0] if c.startswith("prob_")]
    with open(args.flags, newline="") as f:
        flagged = {
            str((args.flags.parent / r[args.file_column]).resolve())
            for r in csv.DictReader(f)
            if r[args.flag_column].strip() not in ("", "0", "false", "False")
        }
    kept = [r for r in rows if str(Path(r["image"]).resolve()) not in flagged]
    print(
        json.dumps(
            {
                "predictions": str(args.predictions),
                "flag_column": args.flag_column,
                "all": _summary(rows, class_names),
                "unflagged": _summary(kept, class_names),
                "flagged_images_left_out": len(rows) - len(kept),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
