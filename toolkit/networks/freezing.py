"""Freezing the early layers of a network for transfer learning.

"Frozen" means unchanged by training: the parameters get ``requires_grad=False`` and the batch-norm
layers inside the frozen part stop updating their running statistics (2-D ones are converted to
``FrozenBatchNorm2d`` by timm's own utility; 1-D / 3-D ones are kept in eval mode).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from timm.models import group_parameters
from timm.utils.model import freeze as timm_freeze
from torch import nn

logger = logging.getLogger(__name__)

_BN2D = (nn.BatchNorm2d, nn.SyncBatchNorm)


class _EvalBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d that stays in eval mode: it normalises with, and never updates, its running statistics."""

    def train(self, mode: bool = True):
        return super().train(False)


class _EvalBatchNorm3d(nn.BatchNorm3d):
    """BatchNorm3d that stays in eval mode (no 3-D frozen batch norm exists in timm or torchvision)."""

    def train(self, mode: bool = True):
        return super().train(False)


def _head_parameter_names(model: nn.Module) -> set[str]:
    """Names of the classifier's parameters (never frozen by an integer `freeze`)."""
    heads = model.get_classifier() if hasattr(model, "get_classifier") else None
    heads = heads if isinstance(heads, (tuple, list)) else [heads]
    head_ids = {id(p) for h in heads if isinstance(h, nn.Module) for p in h.parameters()}
    return {n for n, p in model.named_parameters() if id(p) in head_ids}


def stage_parameter_names(model: nn.Module) -> list[list[str]]:
    """Parameter names per stage, in forward order, from timm's coarse ``group_matcher``; head excluded.

    Stage 0 is the stem (e.g. ResNet conv1+bn1), then one group per stage (ResNet layer1..layer4,
    DenseNet denseblock+transition, EfficientNet blocks.i, ViT blocks.i). Some families group finer
    (timm's VGG: one group per conv / bn layer).
    """
    if not hasattr(model, "group_matcher"):
        raise ValueError(
            f"freeze=<int> needs timm's group_matcher, which {type(model).__name__} does not have; pass a list of "
            f"parameter-name prefixes instead, e.g. freeze={[n for n, _ in model.named_children()][:3]}"
        )
    head = _head_parameter_names(model)
    groups = group_parameters(model, model.group_matcher(coarse=True))
    stages = [[n for n in names if n not in head] for _, names in sorted(groups.items())]
    return [s for s in stages if s]


def _parameters_under(model: nn.Module, prefixes: Sequence[str]) -> list[str]:
    names = [n for n, _ in model.named_parameters()]
    selected = []
    for prefix in prefixes:
        stem = prefix.rstrip(".")
        hits = [n for n in names if n == stem or n.startswith(stem + ".")]
        if not hits:
            children = [n for n, _ in model.named_children()]
            raise ValueError(f"freeze prefix {prefix!r} matches no parameter; top-level modules: {children}")
        selected += hits
    return selected


def _freeze_batch_norms(model: nn.Module, frozen: set[str]) -> None:
    """Stop running-statistics updates in every batch norm whose affine parameters are frozen."""
    for name, module in list(model.named_modules()):
        if not isinstance(module, nn.modules.batchnorm._BatchNorm) or not module.affine:
            continue
        if f"{name}.weight" not in frozen:
            continue
        if isinstance(module, _BN2D):
            timm_freeze(model, [name])  # replaces it with FrozenBatchNorm2d (BatchNormAct2d included)
            continue
        cls = {nn.BatchNorm1d: _EvalBatchNorm1d, nn.BatchNorm3d: _EvalBatchNorm3d}.get(type(module))
        if cls is None:
            logger.warning("Cannot freeze running statistics of %s (%s)", name, type(module).__name__)
            continue
        replacement = cls(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
        )
        replacement.load_state_dict(module.state_dict())
        replacement.requires_grad_(False)
        parent, _, child = name.rpartition(".")
        model.get_submodule(parent).add_module(child, replacement)


def apply_freeze(model: nn.Module, freeze: int | Sequence[str] | None) -> list[str]:
    """Freeze part of `model` in place and return the frozen parameter names.

    `freeze`:
      * None or 0 - nothing;
      * int N - the first N stages (see `stage_parameter_names`): for ResNets 1 = stem (conv1, bn1),
        2 = stem + layer1, ..., 5 = the whole backbone; the classifier head is never frozen;
      * list of parameter-name prefixes, e.g. ``["conv1", "bn1", "layer1"]`` (matched at dots).
    """
    if freeze is None or freeze is False or (isinstance(freeze, int) and freeze == 0):
        return []
    if isinstance(freeze, bool):
        raise ValueError("freeze must be an int (number of stages) or a list of prefixes, not True")
    if isinstance(freeze, int):
        stages = stage_parameter_names(model)
        if not 0 < freeze <= len(stages):
            raise ValueError(
                f"freeze={freeze} is out of range: {type(model).__name__} has {len(stages)} "
                f"freezable stages (stem + blocks, head excluded)"
            )
        names = [n for stage in stages[:freeze] for n in stage]
    elif isinstance(freeze, str):
        names = _parameters_under(model, [freeze])
    else:
        names = _parameters_under(model, list(freeze))
    frozen = set(names)
    for name, param in model.named_parameters():
        if name in frozen:
            param.requires_grad_(False)
    _freeze_batch_norms(model, frozen)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info("Froze %d parameter tensors; %d trainable parameters remain", len(frozen), trainable)
    return names


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) number of parameter elements."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


__all__ = ["apply_freeze", "count_parameters", "stage_parameter_names"]
