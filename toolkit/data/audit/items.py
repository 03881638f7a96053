"""Datalist items as the audit sees them: flattened with their split, class names, common folder."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from toolkit.data.datalist import split_keys


def flatten_items(doc: Mapping) -> list[dict]:
    items = []
    for split in split_keys(doc):
        for item in doc[split]:
            image = item["image"][0] if isinstance(item["image"], list) else item["image"]
            items.append({**item, "image": image, "_split": split})
    return items


def common_folder(paths: Sequence[str]) -> str | None:
    """The deepest folder holding all ``paths`` (file names in the report are shown relative to it)."""
    try:
        return os.path.dirname(os.path.commonpath(paths)) if len(paths) == 1 else os.path.commonpath(paths)
    except ValueError:  # empty, or mixed drives / relative and absolute
        return None


def label_names_of(item: Mapping, labels: Sequence[str]) -> list[str]:
    label = item.get("label")
    if isinstance(label, (list, tuple)):
        return [labels[k] for k, v in enumerate(label) if v] or ["(none)"]
    try:
        return [labels[int(label)]]
    except (TypeError, ValueError, IndexError):
        return [str(label)]


def split_pair(a: str, b: str, order: Sequence[str]) -> str:
    a, b = sorted((a, b), key=lambda s: (order.index(s) if s in order else len(order), s))
    return f"{a}|{b}"
