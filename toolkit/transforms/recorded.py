"""A transform chain as data: written in a bundle's train.json, recorded with the trained model, rebuilt.

A bundle states its loading and normalisation steps in ``configs/train.json`` as MONAI config
components with ``"_mode_": "callable"``: MONAI's parser then hands over each class with its
resolved arguments (a ``functools.partial``) instead of the built object, so :func:`record_steps`
can write exactly those arguments, as plain JSON, into ``models/model_info.json``. Evaluation,
`cit infer`, the exports, Deploy and Label rebuild the chain from that record with
:func:`build_steps`, which uses MONAI's own ``ConfigParser`` once :func:`check_record` has made sure
the record is data, not code (a model folder may come from anywhere):

- no ``$`` expression, ``@`` reference or ``%`` macro, and no key starting with ``_`` other than
  ``_target_`` and ``_desc_`` (``_mode_ / _requires_ / _debug_`` can run code or a debugger);
- every ``_target_`` a class defined in ``monai.transforms`` or ``toolkit.transforms`` (the
  namespaces the project's chains use), not one of those that write files or call a given function.

Anything else is refused with one line naming the entry.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Sequence
from typing import Any

from monai.bundle import ConfigParser
from monai.transforms import Compose, EnsureTyped

from toolkit.transforms.augmentation import augmentation_steps
from toolkit.transforms.utility import LabelToTensord, state_colour_policy

__all__ = [
    "ALLOWED_NAMESPACES",
    "RecordedChainError",
    "build_steps",
    "check_record",
    "record_steps",
    "recorded_transforms",
    "training_transforms",
]

ALLOWED_NAMESPACES = ("monai.transforms", "toolkit.transforms")
# in those namespaces, but they write files or call a function the record would name
REFUSED_CLASSES = frozenset(
    {
        "SaveImage",
        "SaveImaged",
        "WriteFileMapping",
        "WriteFileMappingd",
        "Lambda",
        "Lambdad",
        "RandLambda",
        "RandLambdad",
    }
)
_ALLOWED_KEYS = ("_target_", "_desc_")


class RecordedChainError(ValueError):
    """A recorded transform chain names something it may not, or a step cannot be recorded."""


def _target_name(cls: Any) -> str:
    """The public dotted name of a transform class: ``monai.transforms.Resized`` rather than its module."""
    for namespace in ALLOWED_NAMESPACES:
        if getattr(importlib.import_module(namespace), cls.__name__, None) is cls:
            return f"{namespace}.{cls.__name__}"
    return f"{cls.__module__}.{cls.__qualname__}"


def _record_value(value: Any, where: str) -> Any:
    if isinstance(value, functools.partial) or inspect.isclass(value):
        return _record_component(value, where)
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str):
        if value[:1] in ("$", "@", "%"):
            raise RecordedChainError(f"{where}: the text {value!r} would be read as code or a reference")
        return value
    if hasattr(value, "tolist") and not inspect.isroutine(value):  # numpy / torch values
        return _record_value(value.tolist(), where)
    if isinstance(value, (list, tuple)):
        return [_record_value(v, f"{where}#{i}") for i, v in enumerate(value)]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: _record_value(v, f"{where}#{k}") for k, v in value.items()}
    raise RecordedChainError(
        f"{where}: {type(value).__name__} {value!r} cannot be recorded as JSON; give plain numbers, text or lists"
    )


def _record_component(step: Any, where: str) -> dict:
    cls, kwargs = (step.func, step.keywords) if isinstance(step, functools.partial) else (step, {})
    if not inspect.isclass(cls) or (isinstance(step, functools.partial) and step.args):
        raise RecordedChainError(f"{where}: {step!r} is not a transform class with keyword arguments")
    record = {"_target_": _target_name(cls)}
    record.update({k: _record_value(v, f"{where}#{k}") for k, v in kwargs.items()})
    check_record([record], where)
    return record


def record_steps(steps: Sequence, where: str = "transforms") -> list[dict]:
    """Plain JSON for ``steps``: config components resolved with ``"_mode_": "callable"`` (each a class
    or a ``functools.partial`` of one, nested readers included). A built transform is refused with the
    fix, since its arguments can no longer be read back exactly."""
    out = []
    for i, step in enumerate(steps or []):
        if step is None:  # a component with "_disabled_": true
            continue
        if not (isinstance(step, functools.partial) or inspect.isclass(step)):
            raise RecordedChainError(
                f'{where}#{i}: a built {type(step).__name__}; write it with "_mode_": "callable" so that '
                "its arguments are recorded with the model"
            )
        out.append(_record_component(step, f"{where}#{i}"))
    return out


def _in_namespace(dotted: str) -> bool:
    return any(dotted == n or dotted.startswith(f"{n}.") for n in ALLOWED_NAMESPACES)


def _check_target(name: Any, where: str) -> None:
    if not isinstance(name, str) or not _in_namespace(name.rpartition(".")[0]):
        raise RecordedChainError(
            f"{where}: _target_ {name!r} is outside the allowed namespaces {', '.join(ALLOWED_NAMESPACES)}"
        )
    module, _, attr = name.rpartition(".")
    if attr in REFUSED_CLASSES:
        raise RecordedChainError(f"{where}: _target_ {name!r} writes files or runs a given function")
    try:
        found = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError):
        raise RecordedChainError(f"{where}: _target_ {name!r} does not exist in this installation") from None
    if not inspect.isclass(found) or not _in_namespace(found.__module__):
        raise RecordedChainError(f"{where}: _target_ {name!r} is not a transform class of {module}")


def check_record(record: Any, where: str = "transforms") -> None:
    """Raise :class:`RecordedChainError` unless ``record`` is data naming allowed transform classes only."""
    if isinstance(record, dict):
        for key, value in record.items():
            at = f"{where}#{key}"
            if not isinstance(key, str) or "#" in key or "::" in key:
                raise RecordedChainError(f"{at}: key {key!r} is not a plain argument name")
            if key.startswith("_") and key not in _ALLOWED_KEYS:
                raise RecordedChainError(
                    f"{at}: {key!r} is not allowed in a recorded chain (only _target_, _desc_)"
                )
            if key == "_target_":
                _check_target(value, where)
            else:
                check_record(value, at)
    elif isinstance(record, list):
        for i, value in enumerate(record):
            check_record(value, f"{where}#{i}")
    elif isinstance(record, str) and record[:1] in ("$", "@", "%"):
        raise RecordedChainError(f"{where}: {record[:80]!r} is an expression, reference or macro, not data")
    elif not (record is None or isinstance(record, (str, bool, int, float))):
        raise RecordedChainError(f"{where}: {type(record).__name__} is not JSON data")


def build_steps(record: list[dict], where: str = "transforms") -> list:
    """The transforms ``record`` describes, built by MONAI's ``ConfigParser`` after :func:`check_record`;
    an argument a transform refuses is a :class:`RecordedChainError` with the transform's own words."""
    if not isinstance(record, list) or not all(
        isinstance(step, dict) and "_target_" in step for step in record
    ):
        raise RecordedChainError(f"{where}: expected a list of transform components, each with a _target_")
    check_record(record, where)
    try:
        return list(ConfigParser({"steps": record}).get_parsed_content("steps", lazy=False))
    except RuntimeError as err:  # MONAI names the whole component; its cause says what is wrong with it
        cause = err
        while cause.__cause__ is not None:
            cause = cause.__cause__
        raise RecordedChainError(f"{where}: a step cannot be built: {cause}") from err


def _finish(steps: list, keys: str, label_key: str | None) -> Compose:
    """Plain float32 tensors out (images of one batch may come from formats whose metadata do not
    collate; engines find the source through the item's ``index``), and the label as a tensor."""
    steps.append(EnsureTyped(keys, data_type="tensor", dtype="float32", track_meta=False))
    if label_key:
        steps.append(LabelToTensord(label_key, allow_missing_keys=True))
    return Compose(steps)


def recorded_transforms(record: list[dict], label_key: str | None = "label", keys: str = "image") -> Compose:
    """The evaluation chain of a recorded model: its steps, then tensors out (and the label, if any).
    Its colour policy is stated in the log once per run."""
    steps = build_steps(record)
    reader = next((step["reader"] for step in record if isinstance(step.get("reader"), dict)), {})
    for step in record:
        if step["_target_"] == "toolkit.transforms.AsChannelsd":
            state_colour_policy(step.get("colour", "rgb"), reader.get("alpha", "drop"), step.get("channels"))
    return _finish(steps, keys, label_key)


def training_transforms(
    loading: Sequence,
    augmentation: Sequence | Compose | None,
    normalisation: Sequence,
    label_key: str | None = "label",
    keys: str = "image",
) -> Compose:
    """A bundle's training chain: ``loading`` -> ``augmentation`` (on the [0, 1] scale the loading ends
    with, so padding is black) -> ``normalisation``. Loading and normalisation are built through their
    record, exactly as evaluation will rebuild them; every deterministic step comes first, so
    ``CacheDataset`` caches the loading."""
    steps = build_steps(record_steps(loading, "loading"), "loading")
    steps += augmentation_steps(augmentation)
    steps += build_steps(record_steps(normalisation, "normalisation"), "normalisation")
    return _finish(steps, keys, label_key)
