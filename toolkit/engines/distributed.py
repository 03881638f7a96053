"""The few places where a run differs under torchrun (DDP): samplers, which process writes files.

The base configs call these in single-process runs too, so one config serves both: with no
process group every helper behaves as for a single process. MONAI's ``SupervisedTrainer`` calls
``set_epoch`` on any ``DistributedSampler`` itself.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from monai.data import DistributedSampler, DistributedWeightedRandomSampler
from torch.utils.data import WeightedRandomSampler

from toolkit.data import sample_weights


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def process_rank() -> int:
    """Rank of this process (0 without a process group)."""
    return dist.get_rank() if is_distributed() else 0


def on_main_process(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` on rank 0 only (file writers, plots); returns its result there, ``None`` elsewhere."""
    return fn() if process_rank() == 0 else None


def main_process_handlers(handlers: Sequence, keep: tuple[type, ...] = ()) -> list:
    """All ``handlers`` on rank 0; on other ranks only instances of ``keep`` (those every rank must run)."""
    if process_rank() == 0:
        return list(handlers)
    return [h for h in handlers if isinstance(h, keep)]


def default_device() -> torch.device:
    """This process's GPU (``LOCAL_RANK`` under torchrun, else the first) when there is one, else the CPU."""
    if torch.cuda.is_available():
        return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
    return torch.device("cpu")


def train_sampler(dataset, items: Sequence[dict] | None, num_classes: int, seed: int = 0):
    """The training sampler: class-balanced when ``items`` are given, sharded under DDP.

    - one process, ``items`` None: ``None`` (the DataLoader shuffles);
    - one process, ``items``: a seeded ``WeightedRandomSampler`` (weights from ``toolkit.data.sample_weights``);
    - DDP: MONAI's ``DistributedSampler``, or its ``DistributedWeightedRandomSampler`` with the same
      weights, so a class-balanced recipe stays class-balanced on every rank.
    """
    weights = sample_weights(items, num_classes) if items is not None else None
    generator = torch.Generator().manual_seed(int(seed))
    if is_distributed():
        if weights is None:
            return DistributedSampler(dataset, shuffle=True, seed=int(seed))
        return DistributedWeightedRandomSampler(
            dataset, weights.tolist(), generator=generator, seed=int(seed)
        )
    if weights is None:
        return None
    return WeightedRandomSampler(weights, num_samples=len(weights), replacement=True, generator=generator)


def eval_sampler(dataset):
    """``None`` in one process; under DDP a non-shuffling sampler that pads nothing (``even_divisible=False``),
    so every item is evaluated exactly once across ranks."""
    if not is_distributed():
        return None
    return DistributedSampler(dataset, shuffle=False, even_divisible=False)
