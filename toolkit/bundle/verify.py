"""The MONAI model zoo's own bundle checks, for any bundle folder (`cit verify-bundle`).

The zoo's CI (``ci/verify_bundle.py``) accepts a bundle when its required files are there, its
large-file list is sound, its version has a changelog entry, its metadata passes the schema, its
workflows provide MONAI's properties, its network gives the shapes its metadata states, and it
exports to TorchScript. :func:`verify_bundle` runs the same checks with MONAI's own functions,
offline, and returns one :class:`CheckResult` per check instead of stopping at the first failure.

The checks from ``properties`` on evaluate the bundle's configs, i.e. run its code, as
``monai.bundle`` does. In-repository bundles pull ``configs/base`` with macros relative to the
repository root; they are read through :func:`toolkit.bundle.configs.read_config` (macros made
absolute) into a temporary file, so the checks do not depend on (or change) the working directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import torch

from toolkit.bundle.configs import BASE_PREFIX, read_config
from toolkit.bundle.datalists import DATALIST_NAME
from toolkit.bundle.description import info_path, load_model_info
from toolkit.bundle.trust import UntrustedBundleError, check_bundle
from toolkit.io import sha256_file

SCHEMA = Path(__file__).resolve().parents[1] / "resources" / "bundle_metadata_schema.json"
REQUIRED_FILES = ("configs/metadata.json", "LICENSE", "docs/README.md", "configs/inference.json")
# workflow config -> MONAI workflow type (MONAI checks an evaluation as an infer-type workflow)
WORKFLOWS = (("train.json", "train"), ("inference.json", "infer"), ("evaluate.json", "infer"))
LARGE_FILE_NAMES = ("large_files.yml", "large_files.yaml", "large_files.json")
URL_SCHEMES = ("http", "https", "file")
SCOPES = tuple(Path(name).stem for name, _ in WORKFLOWS)  # "train:KEY" overrides KEY in train.json only
NET_ID = "network_def"
MESSAGE_LIMIT = 400  # characters kept of each error in a one-line message
NOT_PREDICTING = "a pretraining bundle (metadata.json states no 'pred' output): no inference config to check"


@dataclass(frozen=True)
class CheckResult:
    """Outcome of one check: ``message`` says what is wrong (naming the file) or, when ok, any remark."""

    name: str
    ok: bool
    message: str = ""

    def line(self) -> str:
        """``ok <check>[: remark]`` or ``FAIL <check>: <what is wrong>``, as `cit verify-bundle` prints it."""
        if self.ok:
            return f"ok {self.name}" + (f": {self.message}" if self.message else "")
        return f"FAIL {self.name}: {self.message}"


class CheckFailed(Exception):
    """Raised inside a check with the one-line reason it failed."""


@dataclass
class _Bundle:
    root: Path
    overrides: dict
    tmp: Path
    trust: bool = False

    def require_trust(self) -> None:
        """The checks that evaluate configs run the bundle's code: refused for a foreign folder whose
        configs hold code this toolkit's bundles do not, unless trusted (toolkit.bundle.trust)."""
        try:
            check_bundle(self.root, self.trust)
        except UntrustedBundleError as err:
            raise CheckFailed(str(err)) from err

    def overrides_for(self, config_name: str) -> dict:
        """``bundle_root``, the overrides of every config, then those scoped to ``config_name``
        (``"inference:dataset_dir"`` applies to inference.json only)."""
        stem = Path(config_name).stem
        pairs = {"bundle_root": str(self.root)}
        pairs.update({k: v for k, v in self.overrides.items() if _scope(k)[0] is None})
        pairs.update({_scope(k)[1]: v for k, v in self.overrides.items() if _scope(k)[0] == stem})
        return pairs

    def check_overrides(self, config_name: str) -> dict:
        """:meth:`overrides_for`, with train.json's and inference.json's ``output_dir`` (and train.json's
        ``ckpt_dir``) in the checks' temporary folder unless given: building the train workflow writes a
        split there (and, on the demo data, the images that inference.json then reads by default), and a
        trained bundle's own ``output/`` keeps the split it was trained on, which evaluate.json reads."""
        pairs = self.overrides_for(config_name)
        stem = Path(config_name).stem
        if stem in ("train", "inference"):
            pairs.setdefault("output_dir", str(self.tmp / "output"))
        if stem == "train":
            pairs.setdefault("ckpt_dir", str(self.tmp / "models"))
        return pairs

    @property
    def meta_file(self) -> Path:
        return self.root / "configs" / "metadata.json"

    def predicts(self) -> bool:
        """Whether metadata.json states a ``pred`` output (a model that predicts, not a pretrained trunk)."""
        outputs = (self.metadata().get("network_data_format") or {}).get("outputs") or {}
        return "pred" in outputs

    def trained_models(self) -> Path:
        """The folder of the trained weights the evaluation would use (``ckpt_dir`` if overridden)."""
        ckpt_dir = self.overrides_for("evaluate.json").get("ckpt_dir")
        return Path(ckpt_dir) if ckpt_dir else self.root / "models"

    def config(self, name: str) -> Path:
        return self.root / "configs" / name

    def metadata(self) -> dict:
        """metadata.json as a dict; a missing or unreadable file fails the calling check."""
        if not self.meta_file.is_file():
            raise CheckFailed(f"{self.meta_file} is missing")
        try:
            meta = json.loads(self.meta_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise CheckFailed(f"{self.meta_file} is not valid JSON: {err}") from err
        if not isinstance(meta, dict):
            raise CheckFailed(f"{self.meta_file} does not hold a JSON object")
        return meta

    def runnable_config(self, name: str) -> str:
        """Path of a config MONAI can read from any working directory.

        Exported bundles have the base expanded: the file itself. In-repository ones pull
        ``configs/base`` with macros relative to the repository root: a temporary copy with those
        macros made absolute (``read_config``), named as the original (``ckpt_export`` stores the
        config under its file name)."""
        path = self.config(name)
        if not path.is_file():
            raise CheckFailed(f"{path} is missing")
        if not _has_base_macro(_load(path)):
            return str(path)
        folder = self.tmp / "configs" / Path(name).stem
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / path.name
        target.write_text(json.dumps(read_config(path, bundle_root=self.root)), encoding="utf-8")
        return str(target)

    def monai_overrides(self, function: Callable, config_name: str) -> dict:
        """:meth:`overrides_for`, less any id that the MONAI ``function`` takes as its own argument
        (``device``: the checks run the network on the CPU)."""
        import inspect

        own = set(inspect.signature(function).parameters)
        return {k: v for k, v in self.overrides_for(config_name).items() if k not in own}


def verify_bundle(
    folder: str | os.PathLike,
    overrides: dict | None = None,
    checks: tuple[str, ...] | list[str] | None = None,
    trust: bool = False,
) -> list[CheckResult]:
    """Run the model zoo's checks on the bundle ``folder`` (all of :data:`CHECKS`, or ``checks``), in order.

    ``overrides`` are config ``{id: value}`` pairs applied wherever a config is evaluated
    (``properties``, ``net_in_out``, ``torchscript``), e.g. ``dataset_dir`` / ``output_dir`` /
    ``cache_rate`` so that the workflows build on small data; an id prefixed with a workflow
    config's name (``"inference:dataset_dir"``, ``"train:..."``, ``"evaluate:..."``) applies to
    that config only (training takes a datalist, inference a folder of images). Nothing is written
    into the bundle by the checks themselves; the train and inference workflows the ``properties``
    check builds write into a temporary folder unless ``output_dir`` / ``ckpt_dir`` are given,
    evaluate.json where its config says (its ``output_dir``). evaluate.json is checked on a trained
    model whose training split is found (``output_dir``'s datalist, or ``datalist_file``);
    otherwise the result says which overrides it needs.
    """
    root = Path(folder).resolve()
    if not root.is_dir():
        raise NotADirectoryError(f"{folder} is not a folder")
    names = list(CHECKS) if checks is None else list(checks)
    unknown = [n for n in names if n not in CHECKS]
    if unknown:
        raise ValueError(f"unknown check(s) {unknown}; known: {list(CHECKS)}")
    results = []
    with tempfile.TemporaryDirectory(prefix="cit-verify-") as tmp, _on_sys_path(root):
        bundle = _Bundle(root, dict(overrides or {}), Path(tmp), trust)
        for name in names:
            try:
                remark = CHECKS[name](bundle)
            except CheckFailed as err:
                results.append(CheckResult(name, False, str(err)))
            else:
                results.append(CheckResult(name, True, remark or ""))
    return results


def check_files(bundle: _Bundle) -> str:
    """The files the zoo requires (metadata, licence, documentation, inference config): a bundle
    without them cannot be published, described or run by MONAI Label / Deploy. A pretraining
    bundle (its metadata states no ``pred`` output) has no inference config to ship."""
    predicts = bundle.predicts()
    required = [n for n in REQUIRED_FILES if predicts or n != "configs/inference.json"]
    missing = [f"{name} ({bundle.root / name})" for name in required if not (bundle.root / name).is_file()]
    if missing:
        raise CheckFailed("missing " + ", ".join(missing))
    return "" if predicts else NOT_PREDICTING


def check_large_files(bundle: _Bundle) -> str:
    """``large_files.yml`` must let ``download_large_files`` fetch every file safely: a URL and a
    path inside the bundle per entry, and a hash that matches a file already present (offline)."""
    from monai.apps.utils import check_hash
    from monai.bundle import ConfigParser

    found = [bundle.root / n for n in LARGE_FILE_NAMES if (bundle.root / n).is_file()]
    if not found:
        return "no large_files.yml"
    path = found[0]
    try:
        entries = ConfigParser.load_config_file(str(path)).get("large_files")
    except Exception as err:  # a file MONAI cannot read: YAML / JSON errors of several libraries
        raise CheckFailed(f"{path} cannot be read: {_one_line(err)}") from err
    if not isinstance(entries, list) or not entries:
        raise CheckFailed(f"{path} has no list under 'large_files'")
    problems = []
    for n, entry in enumerate(entries, 1):
        if not isinstance(entry, dict):
            problems.append(f"entry {n} is not a mapping")
            continue
        problems += [f"entry {n}: {p}" for p in _large_file_problems(bundle.root, entry, check_hash)]
    if problems:
        raise CheckFailed(f"{path}: " + "; ".join(problems))
    return f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'} in {path.name}"


def _large_file_problems(root: Path, entry: dict, check_hash: Callable) -> list[str]:
    problems = [f"'{key}' missing" for key in ("path", "url") if not entry.get(key)]
    rel = str(entry.get("path") or "")
    if rel:
        parts = PurePosixPath(rel.replace("\\", "/")).parts
        target = (root / rel).resolve()
        if os.path.isabs(rel) or ".." in parts or not target.is_relative_to(root):
            problems.append(f"path {rel!r} leaves the bundle folder")
        elif target.is_file() and entry.get("hash_val"):
            hash_type = str(entry.get("hash_type") or "md5")  # MONAI's download_url default
            try:
                same = check_hash(target, str(entry["hash_val"]), hash_type)
            except Exception as err:  # an unknown hash type
                problems.append(f"{rel}: hash cannot be checked: {_one_line(err)}")
            else:
                if not same:
                    problems.append(f"{rel}: {hash_type} hash differs from hash_val")
    url = str(entry.get("url") or "")
    if url and urllib.parse.urlsplit(url).scheme not in URL_SCHEMES:
        problems.append(f"url {url!r} is not http(s) or file")
    return problems


def check_version(bundle: _Bundle) -> str:
    """The zoo publishes a bundle per version and shows its changelog: the version needs an entry."""
    meta = bundle.metadata()
    version = meta.get("version")
    if not version:
        raise CheckFailed(f"'version' is missing in {bundle.meta_file}")
    changelog = meta.get("changelog")
    if not isinstance(changelog, dict) or version not in changelog:
        raise CheckFailed(f"version {version!r} has no entry in 'changelog' of {bundle.meta_file}")
    return f"version {version}"


def check_metadata(bundle: _Bundle) -> str:
    """metadata.json against the vendored copy of the zoo's schema (offline; MONAI would download
    the schema only when the file is absent, so it gets a temporary copy it cannot alter)."""
    from monai.bundle import verify_metadata

    if not bundle.meta_file.is_file():
        raise CheckFailed(f"{bundle.meta_file} is missing")
    schema = bundle.tmp / "schema" / SCHEMA.name
    schema.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(SCHEMA, schema)
    try:
        verify_metadata(
            meta_file=str(bundle.meta_file),
            filepath=str(schema),
            hash_val=sha256_file(SCHEMA),
            hash_type="sha256",
        )
    except Exception as err:  # ValueError on a schema violation; any error of a malformed file
        raise CheckFailed(f"{bundle.meta_file}: {_one_line(err)}") from err
    return ""


def check_properties(bundle: _Bundle) -> str:
    """Each workflow provides MONAI's required properties (what MONAI Label, Deploy and the zoo's
    apps read), and they evaluate: ``ConfigWorkflow.check_properties`` builds them."""
    bundle.require_trust()
    checked, problems = [], []
    for name, workflow_type in WORKFLOWS:
        if not bundle.config(name).is_file():
            continue
        if name == "evaluate.json" and not info_path(bundle.trained_models()).is_file():
            checked.append(
                f"not {name}: it evaluates a trained model and {bundle.trained_models()} holds none"
            )
            continue
        no_split = _no_evaluation_split(bundle) if name == "evaluate.json" else None
        if no_split:
            checked.append(f"not {name}: {no_split}")
            continue
        try:
            _check_workflow(bundle, name, workflow_type)
        except CheckFailed as err:
            problems.append(str(err))
        checked.append(f"{name} ({workflow_type})")
    if problems:
        raise CheckFailed("; ".join(problems))
    if not checked:
        raise CheckFailed(
            f"no workflow config (train.json, inference.json, evaluate.json) in {bundle.root / 'configs'}"
        )
    return ", ".join(checked)


def _no_evaluation_split(bundle: _Bundle) -> str | None:
    """Why evaluate.json cannot be built here, or None: it evaluates the trained model on the split it
    was trained on, which training wrote into its ``output_dir``; a copy exported from elsewhere has none
    until given the training run's output folder and data (or a datalist made by `cit datalist`)."""
    ids = bundle.overrides_for("evaluate.json")
    output_dir = ids.get("output_dir", str(bundle.root / "output"))
    if ids.get("datalist_file") or str(output_dir).startswith("$"):  # an expression: the workflow decides
        return None
    saved = Path(output_dir) / DATALIST_NAME
    if saved.is_file():
        return None
    return (
        f"it evaluates the trained model on its training run's split, and {saved} is missing: give "
        "--override evaluate:output_dir=<that run's output folder> --override evaluate:dataset_dir=<its data> "
        "(or evaluate:datalist_file=<a datalist made by `cit datalist`>)"
    )


def _check_workflow(bundle: _Bundle, name: str, workflow_type: str) -> None:
    from monai.bundle import ConfigWorkflow
    from monai.utils import BundleProperty, BundlePropertyConfig

    path = bundle.config(name)
    try:
        workflow = ConfigWorkflow(
            config_file=bundle.runnable_config(name),
            meta_file=str(bundle.meta_file),
            logging_file=False,
            workflow_type=workflow_type,
            **bundle.check_overrides(name),
        )
        workflow.initialize()
    except CheckFailed:
        raise
    except Exception as err:
        raise CheckFailed(f"{path}: {_one_line(err)}") from err
    # every required id missing at once (check_properties stops at the first with a KeyError)
    missing = [
        f"{prop} (id '{spec[BundlePropertyConfig.ID]}')"
        for prop, spec in workflow.properties.items()
        if spec.get(BundleProperty.REQUIRED) and spec[BundlePropertyConfig.ID] not in workflow.parser
    ]
    if missing:
        raise CheckFailed(f"{path} lacks required {workflow_type} properties: {', '.join(missing)}")
    try:
        wrong = workflow.check_properties()
    except Exception as err:
        raise CheckFailed(f"{path}: {_one_line(err)}") from err
    if wrong:
        raise CheckFailed(f"{path}: properties missing or with a wrong id: {', '.join(wrong)}")


def check_net_in_out(bundle: _Bundle) -> str:
    """The network of inference.json takes and gives what metadata.json's ``network_data_format``
    states (``verify_net_in_out`` on random input). A bundle trained in place keeps the generic
    metadata while its ``model_info.json`` describes other classes: that is said in one line."""
    bundle.require_trust()
    from monai.bundle import verify_net_in_out

    if not bundle.predicts():
        return NOT_PREDICTING
    meta = bundle.metadata()
    _trained_model_matches_metadata(bundle, meta)
    config = bundle.runnable_config("inference.json")
    try:
        verify_net_in_out(
            net_id=NET_ID,
            meta_file=str(bundle.meta_file),
            config_file=config,
            device="cpu",
            **bundle.monai_overrides(verify_net_in_out, "inference.json"),
        )
    except Exception as err:
        raise CheckFailed(f"{bundle.config('inference.json')}: {_one_line(err)}") from err
    return ""


def _trained_model_matches_metadata(bundle: _Bundle, meta: dict) -> None:
    models = bundle.root / "models"
    if not info_path(models).is_file():
        return
    try:
        info = load_model_info(models)
    except (OSError, ValueError) as err:
        raise CheckFailed(_one_line(err)) from err
    channels = int(info.preprocessing.get("channels", info.network.get("in_channels", 3)))
    fmt = meta.get("network_data_format") or {}
    stated_in = (fmt.get("inputs") or {}).get("image", {}).get("num_channels")
    stated_out = (fmt.get("outputs") or {}).get("pred", {}).get("num_channels")
    if (stated_out, stated_in) != (info.num_classes, channels):
        raise CheckFailed(
            f"{info_path(models)} describes the trained model ({info.num_classes} classes, {channels} input "
            f"channels) but {bundle.meta_file} states {stated_out} output / {stated_in} input channels: export "
            f"it with `cit export --bundle {bundle.root} --format bundle --out <folder>` (its metadata.json "
            "describes the trained model) and verify that folder"
        )


def check_torchscript(bundle: _Bundle) -> str:
    """The weights export to TorchScript (``ckpt_export``, into a temporary folder) and load back, as
    MONAI Deploy needs; a ``models/model.ts`` shipped with the bundle must load too. An untrained
    bundle is exported with the random weights of its ``network_def``, as the zoo's CI does."""
    bundle.require_trust()
    from monai.bundle import ConfigParser, ckpt_export

    if not bundle.predicts():
        return NOT_PREDICTING
    config = bundle.runnable_config("inference.json")
    inference = bundle.config("inference.json")
    ckpt = bundle.root / "models" / "model.pt"
    untrained = not ckpt.is_file()
    if untrained:
        parser = ConfigParser()
        parser.read_config(config)
        if bundle.meta_file.is_file():
            parser.read_meta(str(bundle.meta_file))
        for key, value in bundle.overrides_for("inference.json").items():
            parser[key] = value
        try:
            network = parser.get_parsed_content(NET_ID)
        except Exception as err:
            raise CheckFailed(f"{inference}: {NET_ID} cannot be built: {_one_line(err)}") from err
        ckpt = bundle.tmp / "untrained" / "model.pt"
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        torch.save(network.state_dict(), ckpt)
    exported = bundle.tmp / "export" / "model.ts"
    exported.parent.mkdir(parents=True, exist_ok=True)
    try:
        ckpt_export(
            net_id=NET_ID,
            filepath=str(exported),
            ckpt_file=str(ckpt),
            meta_file=str(bundle.meta_file),
            config_file=config,
            **bundle.monai_overrides(ckpt_export, "inference.json"),
        )
        torch.jit.load(str(exported), map_location="cpu")
    except Exception as err:
        weights = "random weights" if untrained else str(ckpt)
        raise CheckFailed(f"{inference}: ckpt_export with {weights}: {_one_line(err)}") from err
    shipped = bundle.root / "models" / "model.ts"
    if shipped.is_file():
        try:
            torch.jit.load(str(shipped), map_location="cpu")
        except Exception as err:
            raise CheckFailed(f"{shipped} does not load: {_one_line(err)}") from err
    remarks = ["weights untrained (random weights of network_def: no models/model.pt)"] if untrained else []
    remarks += ["models/model.ts loads"] if shipped.is_file() else []
    return "; ".join(remarks)


# the checks in the order they run (the zoo's CI order)
CHECKS: dict[str, Callable[[_Bundle], str]] = {
    "files": check_files,
    "large_files": check_large_files,
    "version": check_version,
    "metadata": check_metadata,
    "properties": check_properties,
    "net_in_out": check_net_in_out,
    "torchscript": check_torchscript,
}
# the checks that read files only (no config is evaluated)
STATIC_CHECKS = ("files", "large_files", "version", "metadata")


def _scope(key: str) -> tuple[str | None, str]:
    """``"inference:dataset_dir"`` -> ``("inference", "dataset_dir")``; an unscoped id -> ``(None, id)``."""
    scope, sep, rest = key.partition(":")
    if sep and scope in SCOPES and rest and not rest.startswith(":"):  # "a::b" is MONAI's old id separator
        return scope, rest
    return None, key


def _load(path: Path) -> Any:
    from monai.bundle import ConfigParser

    try:
        return ConfigParser.load_config_file(str(path))
    except Exception as err:
        raise CheckFailed(f"{path} cannot be read: {_one_line(err)}") from err


def _has_base_macro(value: Any) -> bool:
    if isinstance(value, dict):
        return any(_has_base_macro(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_base_macro(v) for v in value)
    return isinstance(value, str) and value.startswith(BASE_PREFIX)


def _one_line(err: BaseException) -> str:
    """``Type: message`` of ``err`` and of its innermost cause, on one line (MONAI's config errors
    wrap the real one and span many lines)."""
    chain = [err]
    while (nxt := chain[-1].__cause__ or chain[-1].__context__) is not None and nxt not in chain:
        chain.append(nxt)
    outer, inner = (f"{type(e).__name__}: {' '.join(str(e).split())}" for e in (chain[0], chain[-1]))
    if len(chain) == 1:
        return _short(outer, MESSAGE_LIMIT)
    return f"{_short(outer, MESSAGE_LIMIT // 2)} (caused by {_short(inner, MESSAGE_LIMIT)})"


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


@contextlib.contextmanager
def _on_sys_path(root: Path) -> Iterator[None]:
    """The bundle folder importable while it is checked, as MONAI's ``run`` and the zoo's CI make
    it (a bundle's ``scripts/`` package)."""
    sys.path.insert(0, str(root))
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(str(root))
