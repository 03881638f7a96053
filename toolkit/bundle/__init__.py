"""The glue only bundles need: where a bundle is, one split per run, the trained model's own
description, loading a bundle's parts, and the handlers that write its files."""

from toolkit.bundle.datalists import SplitMismatchError, datalist_for, saved_datalist, source_folder
from toolkit.bundle.description import ModelInfo, ModelInfoMismatchError, load_model_info, write_model_info
from toolkit.bundle.handlers import PredictionWriter, TrainingHistoryWriter
from toolkit.bundle.loading import InferenceBundle, load_bundle, load_weights
from toolkit.bundle.paths import find_bundle_root

__all__ = [
    "InferenceBundle",
    "ModelInfo",
    "ModelInfoMismatchError",
    "PredictionWriter",
    "SplitMismatchError",
    "TrainingHistoryWriter",
    "datalist_for",
    "find_bundle_root",
    "load_bundle",
    "load_model_info",
    "load_weights",
    "saved_datalist",
    "source_folder",
    "write_model_info",
]
