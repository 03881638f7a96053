"""Where a bundle is, and the class names saved beside its weights."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from toolkit.io import atomic_write_json

def find_bundle_root(name: str) -> str:
    """Locate bundle ``name`` so that configs work from the repo root, the bundle folder or anywhere.

    MONAI's ``ConfigWorkflow.run`` puts the bundle folder on ``sys.path`` before it evaluates the
    config, so that is looked at first; then the working directory and ``./bundles/<name>``.
    MONAI Label and MONAI Deploy override ``bundle_root`` themselves.
    """
    candidates = [Path(p) for p in sys.path if p and Path(p).name == name]
    candidates += [Path.cwd(), Path.cwd() / "bundles" / name]
    for path in candidates:
        if path.name == name and (path / "configs").is_dir():
            return str(path.resolve())
    raise FileNotFoundError(
        f"cannot find bundle '{name}' (looked in sys.path, {Path.cwd()} and ./bundles/{name}); "
        "pass --bundle_root /path/to/bundle"
    )


def save_class_names(class_names: list[str], path: str | os.PathLike) -> list[str]:
    """Write the class names a model was trained with next to its weights; returns them."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(list(class_names), indent=1))
    os.replace(tmp, path)
    return list(class_names)


def load_class_names(path: str | os.PathLike, default: list[str]) -> list[str]:
    """Class names saved at training time, or ``default`` (the bundle's metadata) when absent."""
    path = Path(path)
    if not path.is_file():
        return list(default)
    names = json.loads(path.read_text())
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{path}: expected a JSON list of class names")
    return names
