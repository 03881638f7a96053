"""Modules of your own that register data sources, readers or metrics (``docs/extending.md``).

``CIT_PLUGINS`` names them (comma-separated module names, importable from ``PYTHONPATH`` or
installed), e.g. ``CIT_PLUGINS=my_lab.sources,my_lab.readers cit datalist ...``. Each registry
calls :func:`load_plugins` before it is read, so ``cit``, a bundle run with ``python -m monai.bundle``
and the experiments all see the same parts. The variable is set by whoever runs the toolkit, as
``PYTHONPATH`` is: it names code to run, never data.
"""

from __future__ import annotations

import importlib
import os

PLUGINS_VARIABLE = "CIT_PLUGINS"


class PluginError(ImportError):
    """A module named in ``CIT_PLUGINS`` cannot be imported."""


def plugin_modules() -> list[str]:
    """The module names ``CIT_PLUGINS`` lists, in order."""
    return [name.strip() for name in os.environ.get(PLUGINS_VARIABLE, "").split(",") if name.strip()]


def load_plugins() -> list[str]:
    """Import every module ``CIT_PLUGINS`` names (once: Python keeps imported modules); their
    decorators register what they define. A module that cannot be imported stops the run in one
    line naming it and the variable."""
    names = plugin_modules()
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise PluginError(f"{PLUGINS_VARIABLE} names {name!r}, which cannot be imported: {exc}") from exc
    return names
