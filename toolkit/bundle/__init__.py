"""The glue only bundles need: where a bundle is, loading its parts, handlers that write its files."""

from toolkit.bundle.handlers import PredictionWriter, TrainingHistoryWriter
from toolkit.bundle.loading import InferenceBundle, load_bundle, load_weights
from toolkit.bundle.paths import find_bundle_root, load_class_names, save_class_names

__all__ = [
    "InferenceBundle",
    "PredictionWriter",
    "TrainingHistoryWriter",
    "find_bundle_root",
    "load_bundle",
    "load_class_names",
    "load_weights",
    "save_class_names",
]
