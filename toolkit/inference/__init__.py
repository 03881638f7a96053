"""Batch inference over folders (`cit infer`): discovery, resumable sharded runs, CSV / JSONL / DICOM SR.

Names are imported on first use, so that `cit --help` does not pay for importing torch.
"""

import importlib

_EXPORTS = {
    "DicomFilters": "toolkit.inference.discovery",
    "InputItem": "toolkit.inference.discovery",
    "discover_inputs": "toolkit.inference.discovery",
    "InferenceOptions": "toolkit.inference.runner",
    "RunSummary": "toolkit.inference.runner",
    "run_inference": "toolkit.inference.runner",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'toolkit.inference' has no attribute {name!r}")
