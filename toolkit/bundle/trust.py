"""A bundle folder from elsewhere is code: what this toolkit runs of one without being told to trust it.

MONAI evaluates every ``"$..."`` value of a bundle config with Python's ``eval`` and builds any class
a ``"_target_"`` names, so loading a foreign folder runs whatever its author wrote. `cit infer`,
the Deploy app and the Label app therefore load a bundle from outside this repository in a safe
mode: each of its workflow configs may hold only the expressions and ``_target_`` components that
this toolkit's own bundles hold (the allow-list :data:`ALLOWED_FILE`, generated from
``configs/base`` and ``bundles/`` by ``scripts/update_bundle_allowlist.py``; a test keeps it current), and no ``%`` macro into another file.
A bundle exported by `cit export --format bundle` passes; one with any other code is refused with
one line naming the file, the entry and the way to opt in (``--trust-bundle`` /
``CIT_TRUST_BUNDLE=1``), which a user gives only for a source they would run a program from.

The same allow-list of components is what a recorded transform chain may name.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ALLOWED_FILE = Path(__file__).resolve().parents[1] / "resources" / "trusted_bundle_entries.json"
WORKFLOW_FILES = (
    "inference.json",
    "evaluate.json",
    "train.json",
    "multi_gpu_train.json",
    "multi_gpu_evaluate.json",
)
TRUST_ENV = "CIT_TRUST_BUNDLE"
# component keys that make MONAI run the component under a debugger, with the values that do not
_DEBUGGER_KEYS = {"_mode_": ("default", "callable"), "_debug_": (False,)}
# the repository's own bundles (a source checkout): trusted like the toolkit itself
OWN_BUNDLES = Path(__file__).resolve().parents[2] / "bundles"


class UntrustedBundleError(PermissionError):
    """A foreign bundle config holds code this toolkit's bundles do not: refused unless trusted."""


def config_entries(config: Any, at: str = "") -> Iterator[tuple[str, str, str]]:
    """``(kind, config id, value)`` for every expression (``$``), component (``_target_``), macro (``%``)
    and request for a debugger (``_mode_: debug``, ``_debug_``)."""
    if isinstance(config, dict):
        for key, value in config.items():
            where = f"{at}#{key}" if at else str(key)
            if key == "_target_" and isinstance(value, str):
                yield "_target_", where, value
            elif key in _DEBUGGER_KEYS and value not in _DEBUGGER_KEYS[key]:
                yield "debugger", where, f"{key} {value!r}"  # MONAI would stop in pdb: never on the list
            else:
                yield from config_entries(value, where)
    elif isinstance(config, list):
        for i, value in enumerate(config):
            yield from config_entries(value, f"{at}#{i}" if at else str(i))
    elif isinstance(config, str) and config.startswith("$"):
        yield "expression", at, config
    elif isinstance(config, str) and config.startswith("%"):
        yield "macro", at, config


def allowed_entries() -> dict[str, set[str]]:
    """The expressions and components this toolkit's bundles use (:data:`ALLOWED_FILE`)."""
    doc = json.loads(ALLOWED_FILE.read_text(encoding="utf-8"))
    return {"expression": set(doc["expressions"]), "_target_": set(doc["targets"])}


def collect_allowed(configs: list[dict]) -> dict[str, list[str]]:
    """The allow-list of ``configs`` (the repository's bundle configs with the shared base expanded)."""
    found: dict[str, set[str]] = {"expression": set(), "_target_": set()}
    for config in configs:
        for kind, _, value in config_entries(config):
            if kind in found:
                found[kind].add(value)
    return {"expressions": sorted(found["expression"]), "targets": sorted(found["_target_"])}


def untrusted_entries(config: dict, allowed: dict[str, set[str]] | None = None) -> list[str]:
    """``"id: value"`` of each entry of ``config`` that is not on the allow-list (macros never are)."""
    allowed = allowed or allowed_entries()
    bad = [
        (kind == "macro", f"{where}: {value[:120]}")
        for kind, where, value in config_entries(config)
        if kind == "macro" or value not in allowed.get(kind, ())
    ]
    return [text for _, text in sorted(bad, key=lambda b: b[0])]  # code first, then macros


def is_own_bundle(bundle_dir: str | os.PathLike) -> bool:
    """Whether ``bundle_dir`` is one of this repository's bundles (not a copy from elsewhere)."""
    return Path(bundle_dir).resolve().parent == OWN_BUNDLES and OWN_BUNDLES.is_dir()


def trusted_by_environment() -> bool:
    return os.environ.get(TRUST_ENV, "").strip().lower() in ("1", "true", "yes")


def check_bundle(bundle_dir: str | os.PathLike, trust: bool = False) -> None:
    """Refuse a foreign bundle folder whose workflow configs hold code beyond the allow-list.

    Nothing is checked for one of this repository's bundles, or when ``trust`` (``--trust-bundle``)
    or ``CIT_TRUST_BUNDLE=1`` says the folder's source is trusted.
    """
    if trust or trusted_by_environment() or is_own_bundle(bundle_dir):
        return
    configs = Path(bundle_dir) / "configs"
    allowed = allowed_entries()
    for name in WORKFLOW_FILES:
        path = configs / name
        if path.is_file():
            check_config(json.loads(path.read_text(encoding="utf-8")), path, allowed)


def check_config(config: dict, source: str | os.PathLike, allowed: dict[str, set[str]] | None = None) -> None:
    """Raise :class:`UntrustedBundleError` for the first entries of ``config`` (read from ``source``)
    that are not on the allow-list."""
    bad = untrusted_entries(config, allowed)
    if bad:
        shown = "; ".join(bad[:3]) + (f" (+{len(bad) - 3} more)" if len(bad) > 3 else "")
        raise UntrustedBundleError(
            f"{source}: code this toolkit's bundles do not hold: {shown}. A bundle folder is code "
            f"(MONAI runs its expressions): load it only from a source you would run a program from, "
            f"with --trust-bundle (or {TRUST_ENV}=1)"
        )


def repository_allowed(repo_root: str | os.PathLike) -> dict[str, list[str]]:
    """The allow-list the repository's bundles make (what :data:`ALLOWED_FILE` must hold)."""
    from monai.bundle import ConfigParser

    from toolkit.bundle.configs import read_config

    configs = []
    for path in sorted(Path(repo_root).glob("bundles/*/configs/*.json")):
        if path.name in WORKFLOW_FILES:
            configs.append(json.loads(path.read_text(encoding="utf-8")))  # as written: a copy of the folder
            parser = ConfigParser(read_config(path))
            parser.resolve_macro_and_relative_ids()
            configs.append(parser.get())  # as MONAI spells it once parsed ('::'): an exported copy
    return collect_allowed(configs)


def write_allowed(repo_root: str | os.PathLike) -> Path:
    """Regenerate :data:`ALLOWED_FILE` from the repository's bundles (after changing a config)."""
    from toolkit.io import atomic_write_json

    return atomic_write_json(ALLOWED_FILE, repository_allowed(repo_root), indent=1)
