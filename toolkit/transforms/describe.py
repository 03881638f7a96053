"""One log line per transform: its class and the parameters the built object holds.

For the training log, so that what ran is on record, command-line overrides included
(``--augmentation#0#prob 0.3`` shows as ``augmentation#0: RandRotated(prob=0.3, ...)``). Generic:
the names come from the class's constructor, the values from the object, no table per class.
"""

from __future__ import annotations

import enum
import inspect
import logging
from collections.abc import Sequence
from typing import Any

from monai.transforms import Compose

from toolkit.transforms.augmentation import augmentation_steps

__all__ = ["describe_transform", "log_transforms", "transform_parameters"]

logger = logging.getLogger(__name__)

# constructor arguments about how a transform runs, not what it does to the image
_PLUMBING = frozenset({"allow_missing_keys", "lazy", "dtype", "device", "cache_grid", "log_stats"})


def _is_object(value: Any) -> bool:
    """An object whose attributes may hold parameters (a wrapped transform), not a value or a function."""
    return (
        hasattr(value, "__dict__")
        and not isinstance(value, (type, enum.Enum))
        and not inspect.isroutine(value)
    )


def _held(transform: Any, name: str) -> tuple[bool, Any]:
    """``name`` among the public attributes of ``transform``, else of the objects it wraps, nearest first
    (MONAI's dictionary transforms keep most values in an array transform, e.g.
    ``RandAffined.rand_affine.rand_affine_grid.rotate_range``)."""
    level, seen = [transform], set()
    while level:
        for obj in level:
            if name in vars(obj):
                return True, vars(obj)[name]
        seen.update(map(id, level))
        level = [
            v
            for obj in level
            for k, v in vars(obj).items()
            if not k.startswith("_") and _is_object(v) and id(v) not in seen
        ]
    return False, None


def _empty(value: Any) -> bool:
    return value is None or isinstance(value, (list, tuple)) and all(v is None for v in value)


def transform_parameters(transform: Any) -> dict[str, Any]:
    """The constructor parameters of ``transform`` with the values the built object holds; parameters it
    does not keep, None (or all-None) values and plumbing (``lazy``, ``dtype``, ...) are left out."""
    try:
        params = list(inspect.signature(type(transform).__init__).parameters.values())[1:]
    except (TypeError, ValueError):
        return {}
    names = [p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    out = {}
    for name in names:
        if name in _PLUMBING:
            continue
        found, value = _held(transform, name)
        if found and not _empty(value):
            out[name] = value
    return out


def _text(value: Any) -> str:
    if isinstance(value, enum.Enum):
        return str(value.value)
    if hasattr(value, "tolist"):  # numpy / torch values
        return _text(value.tolist())
    if isinstance(value, float):
        return f"{value + 0.0:.4g}"  # + 0.0: no "-0"
    if isinstance(value, (list, tuple)):
        if len(value) == 1:
            return _text(value[0])
        return "(" + ", ".join(_text(v) for v in value) + ")"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_text(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (str, int, bool)):
        return str(value)
    if _is_object(value):
        return describe_transform(value)
    return getattr(value, "__qualname__", None) or type(value).__name__


def describe_transform(transform: Any) -> str:
    """``"RandRotated(keys=image, prob=0.5, range_x=(-0.2618, 0.2618), ...)"``."""
    if isinstance(transform, Compose):
        steps = ", ".join(describe_transform(t) for t in transform.transforms)
        return f"{type(transform).__name__}[{steps}]"
    params = ", ".join(f"{k}={_text(v)}" for k, v in transform_parameters(transform).items())
    return f"{type(transform).__name__}({params})"


def log_transforms(transforms: Sequence | Compose | None, what: str = "augmentation") -> None:
    """Log (INFO) one line per transform, numbered as the config's list is: ``augmentation#0: ...``."""
    steps = augmentation_steps(transforms)
    if not steps:
        logger.info("%s: none", what)
    for i, step in enumerate(steps):
        logger.info("%s#%d: %s", what, i, describe_transform(step))
