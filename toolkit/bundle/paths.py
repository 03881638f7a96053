"""Where a bundle is."""

from __future__ import annotations

import sys
from pathlib import Path


def find_bundle_root(name: str) -> str:
    """Locate bundle ``name`` so that configs work from the repo root, the bundle folder or anywhere.

    MONAI's ``ConfigWorkflow.run`` puts the bundle folder on ``sys.path`` before it evaluates the
    config, so that is looked at first; then the working directory, ``./bundles/<name>``, and the
    ``bundles`` folder of the source tree this package runs from (so an in-repository bundle works
    from any working directory, also when MONAI's tools load it without running it, e.g.
    ``monai.bundle.load``). MONAI Label and MONAI Deploy override ``bundle_root`` themselves, and an
    exported bundle says ``"."`` (the folder it runs in) or is given ``--bundle_root``.
    """
    source_tree = Path(__file__).resolve().parents[2] / "bundles" / name
    candidates = [Path(p) for p in sys.path if p and Path(p).name == name]
    candidates += [Path.cwd(), Path.cwd() / "bundles" / name, source_tree]
    for path in candidates:
        if path.name == name and (path / "configs").is_dir():
            return str(path.resolve())
    raise FileNotFoundError(
        f"cannot find bundle '{name}' (looked in sys.path, {Path.cwd()}, ./bundles/{name} and {source_tree}); "
        "pass --bundle_root /path/to/bundle"
    )
