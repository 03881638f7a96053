"""Confounds: image properties that predict the label (Cramer's V, one-value shortcuts, size buckets)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np

from toolkit.data.audit.items import label_names_of

# A property is flagged when it predicts the label far better than chance, in either of two ways:
# * as a whole: bias-corrected Cramer's V (Bergsma 2013) of the property x class table >= CONFOUND_V
#   (a "large" association) with a chi-square test p < CONFOUND_P (all classes at once);
# * through one value: at least SHORTCUT_MIN images share the value, at least SHORTCUT_SHARE of
#   them are one class, and the one-sided hypergeometric probability of that many (were the value
#   independent of the class) is below SHORTCUT_P: e.g. 12 RGBA files all in one class of a 100 / 100
#   set (p = 1.8e-4), a shortcut for those images however weak the property is overall (V = 0.25).
CONFOUND_V = 0.5
CONFOUND_P = 1e-3
SHORTCUT_MIN = 10
SHORTCUT_SHARE = 0.9
SHORTCUT_P = 1e-3
SIZE_EXACT_MAX = 10  # with more distinct 2D sizes, sizes are bucketed by powers of two per side
# (report name, key of describe_image); modality and manufacturer only when there are DICOM files
PROPERTIES = (
    ("colour mode", "photometric"),
    ("colour content", "content"),
    ("channels", "channels"),
    ("bit depth", "bit_depth"),
    ("size", "size"),
    ("format", "format"),
    ("modality", "modality"),
    ("manufacturer", "manufacturer"),
)


def _band(n: int) -> str:
    low = 1 << (max(int(n), 1).bit_length() - 1)
    return f"{low}-{2 * low - 1}"


def size_buckets(sizes: Sequence[str]) -> list[str]:
    """Each "WxH" size as it is when the set has at most ``SIZE_EXACT_MAX`` distinct sizes, else
    as power-of-two bands per side ("256-511 x 128-255"); volume shapes stay as they are."""
    flat = [s for s in sizes if s.count("x") == 1]
    if len(set(flat)) <= SIZE_EXACT_MAX:
        return [s.replace("x", " x ") if s.count("x") == 1 else s for s in sizes]
    out = []
    for s in sizes:
        if s.count("x") == 1:
            w, h = (int(v) for v in s.split("x"))
            out.append(f"{_band(w)} x {_band(h)}")
        else:
            out.append(s)
    return out


def cramers_v(table: np.ndarray) -> tuple[float, float]:
    """(bias-corrected Cramer's V, chi-square p) of a contingency table with >= 2 rows and columns."""
    from scipy.stats import chi2_contingency  # scipy comes with imagehash / scikit-learn

    table = np.asarray(table, dtype=np.float64)
    table = table[table.sum(axis=1) > 0][:, table.sum(axis=0) > 0]
    n = table.sum()
    r, k = table.shape
    if r < 2 or k < 2 or n < 2:
        return 0.0, 1.0
    chi2, p, _, _ = chi2_contingency(table, correction=False)
    phi2 = max(0.0, chi2 / n - (k - 1) * (r - 1) / (n - 1))
    rows, cols = r - (r - 1) ** 2 / (n - 1), k - (k - 1) ** 2 / (n - 1)
    denominator = min(rows - 1, cols - 1)
    return (float(np.sqrt(phi2 / denominator)) if denominator > 0 else 0.0), float(p)


def _shortcuts(table: np.ndarray, values: Sequence[str], classes: Sequence[str]) -> list[dict]:
    from scipy.stats import hypergeom

    n = int(table.sum())
    per_class = table.sum(axis=0)
    found = []
    for r, value in enumerate(values):
        held = int(table[r].sum())
        if held < SHORTCUT_MIN:
            continue
        c = int(table[r].argmax())
        count = int(table[r, c])
        share, base = count / held, per_class[c] / n
        if share < SHORTCUT_SHARE or share <= base:
            continue
        p = float(hypergeom.sf(count - 1, n, int(per_class[c]), held))
        if p < SHORTCUT_P:
            found.append(
                {
                    "value": value,
                    "class": classes[c],
                    "images": held,
                    "in_class": count,
                    "share": round(share, 3),
                    "class_share": round(float(base), 3),
                    "p_value": p,
                }
            )
    return found


def _targets(names: list[list[str]], labels: Sequence[str], multi_label: bool) -> dict[str, list[str]]:
    """What a property is tested against: the label, or (multi-label) each class as positive / negative."""
    if not multi_label:
        return {"label": [n[0] for n in names]}
    return {c: [c if c in n else f"not {c}" for n in names] for c in labels}


def _property_values(title: str, key: str, described: Sequence[Mapping]) -> tuple[str, list[str]]:
    """The property's title and each image's value ("unknown" when missing; sizes bucketed)."""
    values = [str(info.get(key)) if info.get(key) is not None else "unknown" for info in described]
    if key == "size":
        values = size_buckets(values)
        title = (
            "size (W x H)"
            if all(v.count(" x ") == 1 and "-" not in v for v in values)
            else "size bucket (W x H)"
        )
    return title, values


def _counts(items: Sequence[Mapping], values: list[str], names: list[list[str]]) -> dict:
    """``{value: {split: {class: images}}}``, the values most frequent first."""
    counts: dict[str, dict[str, dict[str, int]]] = {}
    for item, value, label_names in zip(items, values, names, strict=True):
        split_counts = counts.setdefault(value, {}).setdefault(item["_split"], {})
        for name in label_names:
            split_counts[name] = split_counts.get(name, 0) + 1
    order = sorted(counts, key=lambda v: -sum(sum(c.values()) for c in counts[v].values()))
    return {v: counts[v] for v in order}


def _contingency(order: list[str], values, classes_of, labels: Sequence[str]) -> tuple[np.ndarray, list]:
    """The value x class table of images (rows in ``order``), and its classes in label order."""
    classes = sorted(set(classes_of), key=lambda c: (labels.index(c) if c in labels else len(labels), c))
    table = np.zeros((len(order), len(classes)), dtype=np.int64)
    row, col = {v: i for i, v in enumerate(order)}, {c: j for j, c in enumerate(classes)}
    for value, cls in zip(values, classes_of, strict=True):
        table[row[value], col[cls]] += 1
    return table, classes


def _test_target(title: str, target: str, table: np.ndarray, order: list[str], classes: list) -> tuple:
    """``(Cramer's V, p, flags)`` of the property against one target: flagged as a whole when the
    association is large, and for each value that is a shortcut to one class."""
    v, p = cramers_v(table)
    where = "the label" if target == "label" else f"class {target}"
    flags = []
    if v >= CONFOUND_V and p < CONFOUND_P:
        flags.append(
            {
                "property": title,
                "target": target,
                "kind": "association",
                "cramers_v": round(v, 3),
                "p_value": p,
                "text": f"{title} predicts {where}: Cramer's V {v:.2f} (bias-corrected; chi-square p = {p:.1e})",
            }
        )
    for s in _shortcuts(table, order, classes):
        flags.append(
            {
                "property": title,
                "target": target,
                "kind": "shortcut",
                **s,
                "text": f"{title} {s['value']}: {s['in_class']} of its {s['images']} images are "
                f"class {s['class']!r}, which holds {s['class_share']:.0%} of all images "
                f"(hypergeometric p = {s['p_value']:.1e})",
            }
        )
    return v, p, flags


def _confound_settings(multi_label: bool) -> dict:
    """The rules that flag a property, as the report records them."""
    return {
        "association": f"bias-corrected Cramer's V >= {CONFOUND_V} and chi-square p < {CONFOUND_P}",
        "shortcut": f"a value held by >= {SHORTCUT_MIN} images, >= {SHORTCUT_SHARE:.0%} of them one class, "
        f"one-sided hypergeometric p < {SHORTCUT_P}",
        "size": f"exact W x H with up to {SIZE_EXACT_MAX} distinct sizes, else power-of-two bands per side",
        "multi_label": "each class tested as positive / negative" if multi_label else None,
    }


def confounds(
    items: Sequence[Mapping],
    described: Sequence[Mapping],
    labels: Sequence[str],
    splits: Sequence[str],
    multi_label: bool = False,
) -> dict:
    """Counts of each image property per split and class, and the properties that predict the
    label (see ``CONFOUND_V`` / ``SHORTCUT_*``). ``items`` (with ``_split``) and ``described``
    (``describe_image`` results) are the readable images, in the same order. Multi-label sets are
    tested one class at a time (positive / negative)."""
    names = [label_names_of(item, labels) for item in items]
    targets = _targets(names, labels, multi_label)
    has_dicom = any(info.get("format") == "DICOM" for info in described)
    properties, flags = {}, []
    for title, key in PROPERTIES:
        if key in ("modality", "manufacturer") and not has_dicom:
            continue
        title, values = _property_values(title, key, described)
        counts = _counts(items, values, names)
        entry = {"counts": counts, "images": dict(Counter(values).most_common())}
        if len(counts) > 1:
            order = list(counts)
            entry["cramers_v"], entry["p_value"] = {}, {}
            for target, classes_of in targets.items():
                table, classes = _contingency(order, values, classes_of, labels)
                v, p, found = _test_target(title, target, table, order, classes)
                entry["cramers_v"][target], entry["p_value"][target] = round(v, 3), p
                flags += found
        properties[title] = entry
    return {
        "found": bool(flags),
        "flags": flags,
        "properties": properties,
        "settings": _confound_settings(multi_label),
    }
