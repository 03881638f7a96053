"""Patient-grouped, label-stratified, seeded splits and class-balance helpers.

scikit-learn's ``StratifiedGroupKFold`` only makes equal folds, so it cannot produce 80/10/10 or
85/15 directly. ``split_items`` therefore assigns whole groups (patients), largest first and in a
seeded random order within each size, to the split that is furthest below its target for the
group's class. That keeps every patient in one split, follows the ratios to within one group per
class, and gives the same result for the same seed and input.
"""

from __future__ import annotations

import logging
import re
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence

import numpy as np

logger = logging.getLogger(__name__)

SPLIT_NAMES = ("training", "validation", "test")


# Other names people give the three splits (case-insensitive) in a ratio string or mapping.
_RATIO_ALIASES = {
    "train": "training",
    "training": "training",
    "val": "validation",
    "valid": "validation",
    "validation": "validation",
    "dev": "validation",
    "test": "test",
    "testing": "test",
}


def parse_ratios(ratios: Mapping[str, float] | str | Sequence[float] | None) -> dict[str, float]:
    """Normalise split ratios to fractions summing to 1.

    Accepts a mapping (``{"training": 0.8, "validation": 0.1, "test": 0.1}``; other names are
    kept, ``train`` / ``val`` / ``test`` ... become the datalist's names), a string with named
    parts (``"training=0.7,validation=0.15,test=0.15"``, the documented form; ``train=70,val=30``
    names training and validation only), or three unnamed parts in the order training,
    validation, test (``"70:15:15"``, ``"80/10/10"``, ``[80, 10, 10]``). Unnamed parts must be
    all three: ``"70:30"`` is refused, since it does not say whether 30 is validation or test.
    """
    if ratios is None:
        return {"training": 0.8, "validation": 0.1, "test": 0.1}
    given = ratios
    if isinstance(ratios, str):
        text = ratios.strip()
        if "=" in text:
            parts: dict[str, float] = {}
            for part in re.split(r"[,;]", text):
                if not part.strip():
                    continue
                name, sep, value = part.partition("=")
                name = _RATIO_ALIASES.get(name.strip().lower(), name.strip())
                if not sep or not name:
                    raise ValueError(f"ratios {given!r}: {part.strip()!r} is not NAME=VALUE")
                if name in parts:
                    raise ValueError(f"ratios {given!r}: {name} is given twice")
                parts[name] = _ratio_value(value, given)
            ratios = parts
        else:
            ratios = [_ratio_value(v, given) for v in re.split(r"[:/,;\s]+", text) if v]
    if not isinstance(ratios, Mapping):
        values = list(ratios)
        if len(values) != len(SPLIT_NAMES):
            raise ValueError(
                f"ratios {given!r}: unnamed ratios need all three parts, training:validation:test "
                f"(e.g. 70:15:15), or name them (training=0.7,validation=0.3); got {len(values)}"
            )
        ratios = dict(zip(SPLIT_NAMES, values, strict=True))
    else:
        named: dict[str, float] = {}
        for name, value in ratios.items():
            key = _RATIO_ALIASES.get(str(name).strip().lower(), str(name))
            if key in named:
                raise ValueError(f"ratios {dict(ratios)}: {key} is given twice")
            named[key] = _ratio_value(value, given)
        ratios = named
    if any(v < 0 for v in ratios.values()):
        raise ValueError(f"ratios must be non-negative, got {dict(ratios)}")
    total = float(sum(ratios.values()))
    if total <= 0:
        raise ValueError(f"ratios must sum to a positive number, got {dict(ratios)}")
    return {str(name): float(value) / total for name, value in ratios.items()}


def _ratio_value(value, given) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"ratios {given!r}: {value!r} is not a number") from None


def is_multi_label(items: Sequence[dict]) -> bool:
    return any(isinstance(item.get("label"), (list, tuple)) for item in items)


def _strata(items: Sequence[dict], stratify: bool) -> list:
    """One stratum per item: its class, the rarest positive label (multi-label), or one for all."""
    if not stratify:
        return [0] * len(items)
    if not is_multi_label(items):
        return [item.get("label") for item in items]
    positives = Counter()
    for item in items:
        positives.update(i for i, v in enumerate(item["label"]) if v)
    strata = []
    for item in items:
        present = [i for i, v in enumerate(item["label"]) if v]
        strata.append(min(present, key=lambda i: (positives[i], i)) if present else -1)
    return strata


def _group_ids(items: Sequence[dict], group_key: str | None) -> list[tuple]:
    """Group id per item; items without the key are each their own group."""
    ids = []
    for index, item in enumerate(items):
        value = item.get(group_key) if group_key else None
        ids.append(("g", str(value)) if value not in (None, "") else ("item", index))
    return ids


def split_items(
    items: Sequence[dict],
    ratios: Mapping[str, float] | str | Sequence[float] | None = None,
    seed: int = 0,
    group_key: str | None = "patient_id",
    stratify: bool = True,
) -> dict[str, list[dict]]:
    """Split items into named parts by ``ratios``, keeping each group (patient) in one part.

    Stratified by ``label`` (or, for multi-hot labels, by each item's rarest positive label);
    a group whose items have several classes counts towards its most common one. Deterministic
    for a given seed and input order. Returns ``{name: [items in input order]}`` for every name
    in ``ratios`` (possibly empty for tiny inputs).
    """
    fractions = parse_ratios(ratios)
    names = list(fractions)
    strata = _strata(items, stratify)
    group_of = _group_ids(items, group_key)

    members: dict[tuple, list[int]] = defaultdict(list)
    for index, group in enumerate(group_of):
        members[group].append(index)
    group_stratum = {
        group: Counter(strata[i] for i in indices).most_common(1)[0][0] for group, indices in members.items()
    }

    stratum_sizes = Counter()
    for group, indices in members.items():
        stratum_sizes[group_stratum[group]] += len(indices)
    target = {(name, s): fractions[name] * n for name in names for s, n in stratum_sizes.items()}
    filled = Counter()

    # Seeded shuffle, then largest groups first (stable sort keeps the shuffled order within a size).
    ordered = sorted(members, key=str)
    rng = np.random.default_rng(seed)
    ordered = [ordered[i] for i in rng.permutation(len(ordered))]
    ordered.sort(key=lambda g: -len(members[g]))

    assignment: dict[tuple, str] = {}
    total = len(items)
    for group in ordered:
        stratum, size = group_stratum[group], len(members[group])
        # The part furthest below its target for this class; ties go to the part furthest below
        # its overall target, then to the part listed first.
        best = max(
            range(len(names)),
            key=lambda k: (
                target[(names[k], stratum)] - filled[(names[k], stratum)],
                fractions[names[k]] * total - filled[names[k]],
                -k,
            ),
        )
        name = names[best]
        assignment[group] = name
        filled[(name, stratum)] += size
        filled[name] += size

    # Tiny data sets: per-class targets below one group leave small parts empty. Give each empty
    # part (with a positive ratio) the last-placed (smallest) group of the part most over target.
    for name in names:
        if filled[name] or not fractions[name]:
            continue
        donors = [d for d in names if sum(1 for g in assignment.values() if g == d) > 1]
        if not donors:
            break
        donor = max(donors, key=lambda d: filled[d] - fractions[d] * total)
        group = next(g for g in reversed(ordered) if assignment[g] == donor)
        assignment[group] = name
        filled[donor] -= len(members[group])
        filled[name] += len(members[group])

    result: dict[str, list[dict]] = {name: [] for name in names}
    for index, item in enumerate(items):
        result[assignment[group_of[index]]].append(item)
    return result


SPLIT_GROUP = "split_group"  # item key: the patient + near-duplicate cluster an item belongs to
COLUMN_GROUP = "group"  # item key: the value of a label file's group column (e.g. LC25000's source tile)


class UnionFind:
    """Clusters of ``0..n-1`` joined pair by pair; ``find`` names a cluster by its smallest member, so
    the names (and the splits grouped by them) do not depend on the order of the unions. Our own:
    scipy's ``DisjointSet`` names a cluster by another member, which would change existing splits."""

    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        ri, rj = self.find(i), self.find(j)
        if ri != rj:
            self.parent[max(ri, rj)] = min(ri, rj)


def combine_groups(items: Sequence[dict], keys: Sequence[str], out_key: str = SPLIT_GROUP) -> int:
    """Give every item ``out_key`` = ``"g<n>"``: items sharing a value of any of ``keys`` (a patient
    id, a source tile, a near-duplicate cluster) share it, also through a chain of items, so a split
    grouped by ``out_key`` keeps each of them in one part. An item with none of the keys is its own
    group. Returns the number of groups. The groups are the connected components (scipy) of the
    graph joining each item to each of its values."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    value_node: dict[tuple[str, str], int] = {}
    edges = []
    for index, item in enumerate(items):
        for key in keys:
            value = item.get(key)
            if value not in (None, ""):
                edges.append((index, value_node.setdefault((key, str(value)), len(items) + len(value_node))))
    size = len(items) + len(value_node)
    rows, cols = zip(*edges, strict=True) if edges else ((), ())
    graph = coo_matrix((np.ones(len(edges)), (rows, cols)), shape=(size, size))
    component = connected_components(graph, directed=False)[1][: len(items)]
    for item, group in zip(items, component.tolist(), strict=True):
        item[out_key] = f"g{group}"
    return len(set(component.tolist()))


def check_no_leakage(splits: Mapping[str, Sequence[dict]], group_key: str = "patient_id") -> None:
    """Raise ``ValueError`` if any ``group_key`` value (patient) appears in more than one split."""
    seen: dict[str, set[str]] = defaultdict(set)
    for name, items in splits.items():
        for item in items:
            value = item.get(group_key)
            if value not in (None, ""):
                seen[str(value)].add(name)
    shared = {gid: sorted(names) for gid, names in seen.items() if len(names) > 1}
    if shared:
        shown = ", ".join(f"{gid} in {'/'.join(names)}" for gid, names in sorted(shared.items())[:10])
        more = f" (and {len(shared) - 10} more)" if len(shared) > 10 else ""
        raise ValueError(f"{len(shared)} {group_key} value(s) appear in more than one split: {shown}{more}")


def class_counts(items: Sequence[dict], num_classes: int, multi_label: bool = False) -> list[int]:
    """Items per class (single-label) or positives per class (multi-hot labels)."""
    counts = [0] * num_classes
    for item in items:
        label = item["label"]
        if multi_label:
            if len(label) != num_classes:
                raise ValueError(f"multi-hot label of length {len(label)} for {num_classes} classes: {item}")
            for i, v in enumerate(label):
                counts[i] += int(bool(v))
        else:
            if not 0 <= int(label) < num_classes:
                raise ValueError(f"label {label} outside 0..{num_classes - 1}: {item.get('image')}")
            counts[int(label)] += 1
    return counts


def class_weights(items: Sequence[dict], num_classes: int, multi_label: bool = False) -> list[float]:
    """Loss weights from the class balance of ``items``.

    Single-label: inverse class frequency, normalised to mean 1 over the classes present (for
    ``CrossEntropyLoss(weight=...)``); absent classes get 0. Multi-label: ``pos_weight`` =
    negatives / positives per class (for ``BCEWithLogitsLoss``); 1.0 for a class with no positives.
    """
    counts = class_counts(items, num_classes, multi_label)
    if multi_label:
        total = len(items)
        return [float((total - c) / c) if c else 1.0 for c in counts]
    present = [c for c in counts if c]
    if not present:
        raise ValueError("no items to compute class weights from")
    missing = [i for i, c in enumerate(counts) if not c]
    if missing:
        logger.warning("class index(es) %s have no items; their loss weight is 0", missing)
    inverse = [1.0 / c if c else 0.0 for c in counts]
    mean = sum(inverse) / len(present)
    return [w / mean for w in inverse]


def sample_weights(items: Sequence[dict], num_classes: int):
    """Per-item weights (float64 tensor) that make every class about equally likely to be drawn.

    An item weighs 1 / (size of its class); multi-hot items are weighted by their rarest positive
    class (all-negative items count as one more class).
    """
    import torch

    multi = is_multi_label(items)
    class_counts(items, num_classes, multi)  # validates the labels against num_classes
    strata = _strata(items, stratify=True) if multi else [int(item["label"]) for item in items]
    frequency = Counter(strata)
    return torch.tensor([1.0 / frequency[s] for s in strata], dtype=torch.double)


def weighted_sampler(items: Sequence[dict], num_classes: int, seed: int = 0):
    """A seeded ``WeightedRandomSampler`` drawing classes about equally often (with replacement).

    Multi-hot items are weighted by their rarest positive class (all-negative items count as
    one more class).
    """
    # torch takes ~2.5 s to import: only the sampler needs it, not `import toolkit.data`
    import torch
    from torch.utils.data import WeightedRandomSampler

    weights = sample_weights(items, num_classes)
    generator = torch.Generator().manual_seed(int(seed))
    return WeightedRandomSampler(weights, num_samples=len(items), replacement=True, generator=generator)
