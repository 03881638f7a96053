"""What MONAI's engines lack, kept generic: device / AMP / channels_last set-up, DDP helpers, schedules,
the key metric, early stopping, knowledge distillation and BatchNorm recalibration."""

from toolkit.engines.batchnorm import BatchNormRecalibration, recalibration_loader
from toolkit.engines.distillation import (
    DistillationIteration,
    DistillationLoss,
    FrozenTeacher,
    distillation_term,
    iteration_metrics,
)
from toolkit.engines.distributed import (
    default_device,
    eval_sampler,
    is_distributed,
    main_process_handlers,
    on_main_process,
    process_rank,
    train_sampler,
)
from toolkit.engines.monitoring import early_stopping, key_metrics, tracked_whole_batches
from toolkit.engines.progress import ProgressBar
from toolkit.engines.setup import (
    PrepareImageBatch,
    dataset_items,
    latest_checkpoint,
    prepare_batch_for,
    prepare_network,
    to_probabilities,
)
from toolkit.engines.ssl import ContrastiveIteration, ssl_loss, ssl_network, trunk_of

__all__ = [
    "BatchNormRecalibration",
    "ContrastiveIteration",
    "DistillationIteration",
    "DistillationLoss",
    "FrozenTeacher",
    "PrepareImageBatch",
    "ProgressBar",
    "dataset_items",
    "default_device",
    "distillation_term",
    "early_stopping",
    "eval_sampler",
    "is_distributed",
    "iteration_metrics",
    "key_metrics",
    "tracked_whole_batches",
    "latest_checkpoint",
    "main_process_handlers",
    "on_main_process",
    "prepare_batch_for",
    "prepare_network",
    "recalibration_loader",
    "process_rank",
    "ssl_loss",
    "ssl_network",
    "to_probabilities",
    "train_sampler",
    "trunk_of",
]
