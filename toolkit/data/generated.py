"""What the generated demo data sets (2D images: `synthetic`, 3D volumes: `synthetic_volumes`) share:
their split ratios, and the check that a set already on disk was made with the same parameters."""

from __future__ import annotations

import shutil
from pathlib import Path

from toolkit.data.datalist import load_datalist

RATIOS = {"training": 0.8, "validation": 0.1, "test": 0.1}


def is_current(datalist: Path, params: dict, files_dir: Path) -> bool:
    """True when ``datalist`` was generated with ``params`` and its files exist; an earlier set made
    with other parameters has its ``files_dir`` removed (it is replaced whole)."""
    if not datalist.is_file():
        return False
    try:
        doc = load_datalist(datalist)
    except ValueError:
        return False  # unreadable: regenerate
    items = [i for k in RATIOS for i in doc.get(k, [])]
    if doc.get("generator") == params and all(Path(i["image"]).is_file() for i in items):
        return True
    if "generator" in doc:
        shutil.rmtree(files_dir, ignore_errors=True)
    return False
