"""Batch inference over folders (`cit infer`): discovery, resumable sharded runs, CSV / JSONL / DICOM SR."""

from toolkit.inference.bundle import InferenceBundle, load_bundle
from toolkit.inference.discovery import DicomFilters, InputItem, discover_inputs
from toolkit.inference.runner import InferenceOptions, RunSummary, run_inference

__all__ = [
    "DicomFilters",
    "InferenceBundle",
    "InferenceOptions",
    "InputItem",
    "RunSummary",
    "discover_inputs",
    "load_bundle",
    "run_inference",
]
