"""Write a smaller copy of a datalist: a seeded, stratified, patient-grouped fraction of some splits.

For CPU-sized runs on real data, e.g. a third of training and half of validation, test kept whole:

    python scripts/subset_datalist.py full.json subset.json --keep training=1/3 --keep validation=1/2 --seed 0
"""

from __future__ import annotations

import argparse
from fractions import Fraction

from toolkit.data import load_datalist, save_datalist, split_items


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("datalist")
    parser.add_argument("out")
    parser.add_argument(
        "--keep",
        action="append",
        default=[],
        help="SPLIT=FRACTION, e.g. training=1/3 (repeatable); other splits are kept whole",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    keep = {name: Fraction(value) for name, value in (k.split("=") for k in args.keep)}  # "1/3" or "0.5"
    doc = load_datalist(args.datalist)
    splits = {}
    for name in ("training", "validation", "test"):
        if name not in doc:
            continue
        fraction = keep.get(name, 1.0)
        items = doc[name]
        if fraction < 1.0:
            ratios = {"keep": float(fraction), "drop": float(1 - fraction)}
            items = split_items(items, ratios, seed=args.seed)["keep"]
        splits[name] = items
        print(f"{name}: {len(items)} of {len(doc[name])}")
    save_datalist(
        args.out,
        splits,
        doc["labels"],
        multi_label=doc.get("multi_label", False),
        seed=args.seed,
        subset_of=str(args.datalist),
        kept={k: str(v) for k, v in keep.items()},
    )


if __name__ == "__main__":
    main()
