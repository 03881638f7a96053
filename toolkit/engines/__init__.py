"""What MONAI's engines lack for the bundles: set-up helpers and a few Ignite handlers."""

from toolkit.engines.handlers import PredictionWriter, TrainingHistoryWriter
from toolkit.engines.setup import (
    PrepareImageBatch,
    dataset_items,
    default_device,
    find_bundle_root,
    latest_checkpoint,
    load_class_names,
    prepare_batch_for,
    prepare_network,
    save_class_names,
    to_probabilities,
)

__all__ = [
    "PredictionWriter",
    "TrainingHistoryWriter",
    "dataset_items",
    "default_device",
    "find_bundle_root",
    "latest_checkpoint",
    "load_class_names",
    "PrepareImageBatch",
    "prepare_batch_for",
    "prepare_network",
    "save_class_names",
    "to_probabilities",
]
