"""What MONAI's engines lack, kept generic: device / AMP / channels_last set-up, schedules."""

from toolkit.engines.setup import (
    PrepareImageBatch,
    dataset_items,
    default_device,
    latest_checkpoint,
    prepare_batch_for,
    prepare_network,
    to_probabilities,
)

__all__ = [
    "PrepareImageBatch",
    "dataset_items",
    "default_device",
    "latest_checkpoint",
    "prepare_batch_for",
    "prepare_network",
    "to_probabilities",
]
