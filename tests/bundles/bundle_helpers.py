"""Helpers for running bundles in tests: tiny data, small images, outputs kept out of the repo."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from monai.bundle import ConfigParser

from toolkit.bundle.configs import bundle_parser

REPO_ROOT = Path(__file__).resolve().parents[2]
# config files of each run, as the README's commands give them (evaluation overlays train.json)
CONFIG_FILES = {
    "train": ["train"],
    "evaluate": ["evaluate"],
    "train_evaluate": ["train", "evaluate"],  # the model zoo's form: evaluation as an overlay on training
    "inference": ["inference"],
    "multi_gpu_train": ["train", "multi_gpu_train"],
    "multi_gpu_evaluate": ["evaluate", "multi_gpu_evaluate"],
    "supervised": ["supervised"],  # pretrain_ssl's supervised mode
}


def bundle_config(bundle: str, name: str) -> str:
    return str(REPO_ROOT / "bundles" / bundle / "configs" / f"{name}.json")


def config_arg(bundle: str, config: str) -> str:
    """``--config_file`` value for a run: one path, or MONAI's list form for overlays."""
    files = [bundle_config(bundle, name) for name in CONFIG_FILES[config]]
    return files[0] if len(files) == 1 else "[" + ",".join(f"'{f}'" for f in files) + "]"


def run_bundle(
    bundle: str, run_id: str, config: str, tmp: Path, check: bool = True, cwd: Path = REPO_ROOT, **overrides
) -> subprocess.CompletedProcess:
    """`python -m monai.bundle run <run_id>` in a subprocess, as a user runs it, with outputs under ``tmp``
    (from the repository root, or ``cwd``).

    With ``check=False`` a failing run is returned instead of raising.
    """
    args = [sys.executable, "-m", "monai.bundle", "run", run_id, "--config_file", config_arg(bundle, config)]
    overrides = {"ckpt_dir": str(tmp / "models"), "output_dir": str(tmp / "output"), **overrides}
    for key, value in overrides.items():
        args += [f"--{key}", str(value)]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "CIT_WEIGHTS_DIR": str(tmp / "weights"),
    }
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


def bundle_recipe(bundle: str, config: str = "train", **ids) -> ConfigParser:
    """MONAI's ConfigParser on a bundle's config as a run reads it (macros resolved), with ``ids`` set:
    ``parser.get_parsed_content("augmentation")`` builds the bundle's augmentation as its training does."""
    return bundle_parser(REPO_ROOT / "bundles" / bundle, config, **ids)


def verify_bundle(bundle: str, ckpt_dir: Path) -> None:
    """`verify_metadata` (offline, against the vendored schema) and `verify_net_in_out` on the model
    trained into ``ckpt_dir`` (the network is defined by its ``model_info.json``) pass.

    MONAI's own functions, called in-process (the `python -m monai.bundle verify_*` commands are
    thin wrappers of them; each process would cost seconds of imports)."""
    from monai.bundle import verify_metadata, verify_net_in_out

    meta = bundle_config(bundle, "metadata")
    schema = REPO_ROOT / "toolkit" / "resources" / "bundle_metadata_schema.json"
    verify_metadata(meta_file=meta, filepath=str(schema))
    cwd = os.getcwd()
    os.chdir(REPO_ROOT)  # the configs' base macros are relative to the repository root, as in the README
    try:
        verify_net_in_out(
            "network_def",
            meta_file=meta,
            config_file=bundle_config(bundle, "inference"),
            device="cpu",
            ckpt_dir=str(ckpt_dir),
        )
    finally:
        os.chdir(cwd)
