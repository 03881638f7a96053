"""Reading a bundle's config files wherever the process runs.

A bundle's configs pull the shared base with MONAI macros such as
``"%configs/base/train.json#train"``. MONAI resolves a macro's file path against the working
directory, which is the repository root in the README's commands. Tools that load a bundle from
anywhere (`cit infer`, `cit report`, tests) read the configs through :func:`read_config`, which
points those macros at the base folder found for the bundle, then hand the result to MONAI's own
``ConfigParser``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from monai.bundle import ConfigParser

BASE_PREFIX = "%configs/base/"


def base_config_dir(bundle_root: str | os.PathLike | None = None) -> Path:
    """The ``configs/base`` folder: beside the bundles folder of ``bundle_root``, in the working
    directory, or in the source tree this package was installed from (in that order)."""
    candidates = []
    if bundle_root is not None:
        candidates.append(Path(bundle_root).resolve().parents[1] / "configs" / "base")
    candidates += [Path.cwd() / "configs" / "base", Path(__file__).resolve().parents[2] / "configs" / "base"]
    for folder in candidates:
        if (folder / "common.json").is_file():
            return folder
    raise FileNotFoundError(
        "cannot find the shared bundle configs (configs/base/common.json); looked in "
        + ", ".join(str(c) for c in candidates)
    )


def read_config(files: str | os.PathLike | list, bundle_root: str | os.PathLike | None = None) -> dict:
    """Load (and merge, for a list) config files as MONAI does, with base macros made absolute."""
    paths = [str(f) for f in files] if isinstance(files, (list, tuple)) else str(files)
    config = ConfigParser.load_config_files(paths)
    if bundle_root is None:
        bundle_root = Path(paths[0] if isinstance(paths, list) else paths).resolve().parents[1]
    base = base_config_dir(bundle_root)
    return _absolute_macros(config, f"%{base.as_posix()}/")


def _absolute_macros(value: Any, prefix: str) -> Any:
    if isinstance(value, dict):
        return {k: _absolute_macros(v, prefix) for k, v in value.items()}
    if isinstance(value, list):
        return [_absolute_macros(v, prefix) for v in value]
    if isinstance(value, str) and value.startswith(BASE_PREFIX):
        return prefix + value[len(BASE_PREFIX) :]
    return value


def bundle_parser(bundle_dir: str | os.PathLike, config: str = "train", **ids: Any) -> ConfigParser:
    """MONAI's ``ConfigParser`` on a bundle's ``configs/<config>.json`` as a run reads it (base macros
    resolved), with ``ids`` set: ``get_parsed_content("train_transforms")`` builds the bundle's training
    chain as its training does."""
    parser = ConfigParser(read_config(Path(bundle_dir) / "configs" / f"{config}.json"))
    parser.resolve_macro_and_relative_ids()
    parser.update(ids)
    return parser


def trained_preprocessing(bundle_dir: str | os.PathLike, **ids: Any) -> dict:
    """The evaluation preprocessing that training the bundle (its ``train.json``, ``ids`` overriding
    it) records in ``model_info.json``: for describing a model made without a training run."""
    prep = bundle_parser(bundle_dir, **ids).get_parsed_content("evaluation_preprocessing")
    return {k: v for k, v in prep.items() if v is not None}
