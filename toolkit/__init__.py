"""Clinical imaging toolkit: MONAI-based medical image classification with transfer learning."""

import importlib

__version__ = "0.1.0"

_SUBPACKAGES = ("bundle", "cli", "data", "engines", "evaluation", "inference", "io", "networks", "transforms")


def __getattr__(name: str):
    # `import toolkit` then `toolkit.data...` works in bundle config expressions (MONAI's config
    # parser keeps only the top-level name of `import a.b`), without importing everything up front.
    if name in _SUBPACKAGES:
        return importlib.import_module(f"toolkit.{name}")
    raise AttributeError(f"module 'toolkit' has no attribute {name!r}")
