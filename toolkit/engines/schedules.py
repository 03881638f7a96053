"""Epoch-level learning-rate schedules the bundles switch on and off from their configs.

MONAI's ``WarmupCosineSchedule`` always decays after the warm-up and starts the warm-up at 0 (a
wasted first epoch when it is stepped per epoch); the studies compare warm-up alone, cosine alone
and both. So the schedule here is a plain, picklable factor function for torch's ``LambdaLR``,
stepped once per epoch by MONAI's ``LrScheduleHandler`` (its state is saved in checkpoints).
"""

from __future__ import annotations

import math

import torch

__all__ = ["WarmupCosine", "warmup_cosine_scheduler", "warmup_epochs"]


def _flag(value, name: str) -> bool:
    """A switch given as a bool or as command-line text (true/false, yes/no, on/off, 1/0)."""
    if isinstance(value, (bool, int)) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    if text in ("true", "yes", "on", "1"):
        return True
    if text in ("false", "no", "off", "0"):
        return False
    raise ValueError(f"{name} must be true or false, got {value!r}")


def warmup_epochs(max_epochs: int, fraction: float = 0.1) -> int:
    """Number of warm-up epochs: ``fraction`` of ``max_epochs`` rounded half up, at least 1."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"warm-up fraction must be in (0, 1), got {fraction}")
    return max(1, math.floor(fraction * max_epochs + 0.5))


class WarmupCosine:
    """Learning-rate factor for 0-based epoch ``e`` of ``max_epochs``.

    * warm-up (``warmup_epochs`` = W > 0): ``(e + 1) / (W + 1)`` for ``e < W``, a linear ramp that
      reaches the full rate at epoch W;
    * cosine: ``min_factor + (1 - min_factor) * (1 + cos(pi * (e - W) / (max_epochs - W))) / 2``
      for ``e >= W`` (1 at epoch W, approaching ``min_factor`` at the end); without cosine the
      factor stays 1 after the warm-up.
    """

    def __init__(self, max_epochs: int, warmup_epochs: int = 0, cosine: bool = True, min_factor: float = 0.0):
        if max_epochs < 1:
            raise ValueError(f"max_epochs must be >= 1, got {max_epochs}")
        if not 0 <= warmup_epochs < max_epochs:
            raise ValueError(
                f"warmup_epochs must be in [0, max_epochs), got {warmup_epochs} for {max_epochs} epochs"
            )
        if not 0.0 <= min_factor <= 1.0:
            raise ValueError(f"min_factor must be in [0, 1], got {min_factor}")
        self.max_epochs = int(max_epochs)
        self.warmup_epochs = int(warmup_epochs)
        self.cosine = bool(cosine)
        self.min_factor = float(min_factor)

    def __call__(self, epoch: int) -> float:
        w = self.warmup_epochs
        if epoch < w:
            return (epoch + 1) / (w + 1)
        if not self.cosine:
            return 1.0
        progress = min(1.0, (epoch - w) / (self.max_epochs - w))
        return self.min_factor + (1.0 - self.min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_cosine_scheduler(
    optimizer: torch.optim.Optimizer,
    max_epochs: int,
    warmup: bool = True,
    cosine: bool = True,
    warmup_fraction: float = 0.1,
    min_lr_factor: float = 0.0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """``LambdaLR`` with linear warm-up over the first ``warmup_fraction`` of the epochs (if ``warmup``),
    then cosine decay over the rest (if ``cosine``); both off = constant learning rate.

    ``warmup`` / ``cosine`` also accept "true" / "false" text (bundle command-line overrides).
    Step it once per epoch (``LrScheduleHandler(..., epoch_level=True)``). See :class:`WarmupCosine`
    for the exact factors.
    """
    cosine = _flag(cosine, "cosine")
    w = warmup_epochs(max_epochs, warmup_fraction) if _flag(warmup, "warmup") else 0
    if w >= max_epochs:  # a 1-epoch run has no room for a warm-up
        w = 0
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(max_epochs, w, cosine, min_lr_factor))
