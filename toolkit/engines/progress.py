"""A per-epoch progress bar (loss, metrics) for a terminal; nothing at all in logs, files and CI."""

from __future__ import annotations

import numbers
import sys
from collections.abc import Callable
from typing import Any

import torch
from ignite.engine import Engine, Events
from ignite.handlers import ProgressBar as IgniteProgressBar


def loss_of(output: Any) -> dict[str, float]:
    """``{"loss": value}`` from an engine's output, ``{}`` when it carries no loss.

    Understands a MONAI trainer's output (a dict with "loss", or after decollation a list of such dicts,
    each holding the batch loss) and a plain ignite step returning the loss as a number or 0-d tensor.
    """
    if isinstance(output, (list, tuple)) and output and isinstance(output[0], dict):
        output = output[0]
    if isinstance(output, dict):
        output = output.get("loss")
    if isinstance(output, torch.Tensor) and output.numel() == 1:
        return {"loss": output.item()}
    if isinstance(output, numbers.Real):
        return {"loss": float(output)}
    return {}


class ProgressBar(IgniteProgressBar):
    """ignite's tqdm ``ProgressBar``, one bar per epoch, attached only when it writes to a terminal.

    In a MONAI bundle config, add ``{"_target_": "toolkit.engines.ProgressBar"}`` to a trainer's or an
    evaluator's handler list (in a trainer's, before the ``ValidationHandler``, so the epoch's bar is
    closed before the validation's opens). When the output is not a TTY (CI, a log file, a pipe)
    ``attach`` does nothing, and MONAI's ``StatsHandler`` lines remain the record. On a terminal both
    print: ``StatsHandler(iteration_log=False)`` keeps its per-iteration lines out of the bar's way.
    Under torchrun, attach it on rank 0 only (``toolkit.engines.main_process_handlers``).

    Args:
        output_transform: maps ``engine.state.output`` to ``{name: number}`` shown after the bar;
            the default `loss_of` shows a trainer's loss and nothing for an evaluator.
        metric_names: ``"all"`` (default) shows every metric in ``engine.state.metrics`` (accuracy, AUC,
            ...), a list only those names, None none. Metrics computed at the epoch's end (validation
            metrics, a trainer's ``key_train_metric``) are shown with their new values when the bar closes.
        force: None (default) attaches when the bar's stream (``file``, default ``sys.stderr``) is a TTY;
            True always (e.g. Jupyter, whose streams are not TTYs); False never.
        persist: keep each epoch's finished bar on screen (default) instead of erasing it.
        tqdm_kwargs: passed to tqdm, e.g. ``desc="Validation"``, ``file=sys.stdout``, ``ncols=100``.
    """

    def __init__(
        self,
        output_transform: Callable[[Any], dict] | None = loss_of,
        metric_names: str | list[str] | None = "all",
        force: bool | None = None,
        persist: bool = True,
        **tqdm_kwargs: Any,
    ):
        super().__init__(persist=persist, **tqdm_kwargs)
        self.output_transform = output_transform
        self.metric_names = metric_names
        self.force = force

    def enabled(self) -> bool:
        """Whether `attach` attaches: `force` if set, else whether the bar's stream is a terminal."""
        if self.force is not None:
            return self.force
        stream = self.tqdm_kwargs.get("file") or sys.stderr
        return bool(getattr(stream, "isatty", None) and stream.isatty())

    def attach(self, engine: Engine) -> None:  # type: ignore[override]
        """Advance a bar per iteration and close it at the end of each epoch; nothing when not `enabled`."""
        if not self.enabled():
            return
        # Registered before the bar's own closing handler, so it runs first at EPOCH_COMPLETED.
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._show_epoch_end_values)
        super().attach(engine, metric_names=self.metric_names, output_transform=self.output_transform)

    def _show_epoch_end_values(self, engine: Engine) -> None:
        if self.pbar is None:
            return
        metrics = engine.state.metrics
        names = metrics if self.metric_names == "all" else self.metric_names or []
        values = {name: metrics[name] for name in names if isinstance(metrics.get(name), numbers.Real)}
        if self.output_transform is not None:
            values.update(self.output_transform(engine.state.output))
        self.pbar.set_postfix(values)
