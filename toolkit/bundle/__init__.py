"""The glue only bundles need: where a bundle is, one split per run, the trained model's own
description, loading a bundle's parts, the handlers that write its files, and a trained bundle as a
distillation teacher."""

from toolkit.bundle.backbone import BackboneLeakageError, adopt_backbone, check_evaluation
from toolkit.bundle.datalists import (
    SplitMismatchError,
    datalist_for,
    inference_records,
    saved_datalist,
    source_folder,
)
from toolkit.bundle.description import (
    ModelInfo,
    ModelInfoMismatchError,
    bundle_network,
    chain_preprocessing,
    load_model_info,
    preprocessing_transforms,
    require_weights,
    weights_start,
    write_model_info,
)
from toolkit.bundle.handlers import PredictionWriter, TrainingHistoryWriter
from toolkit.bundle.loading import InferenceBundle, load_bundle, load_weights
from toolkit.bundle.paths import find_bundle_root
from toolkit.bundle.teacher import TeacherMismatchError, load_teacher

__all__ = [
    "BackboneLeakageError",
    "InferenceBundle",
    "ModelInfo",
    "ModelInfoMismatchError",
    "PredictionWriter",
    "SplitMismatchError",
    "TeacherMismatchError",
    "TrainingHistoryWriter",
    "adopt_backbone",
    "bundle_network",
    "chain_preprocessing",
    "check_evaluation",
    "datalist_for",
    "find_bundle_root",
    "inference_records",
    "load_bundle",
    "load_model_info",
    "load_teacher",
    "load_weights",
    "preprocessing_transforms",
    "require_weights",
    "saved_datalist",
    "source_folder",
    "weights_start",
    "write_model_info",
]
