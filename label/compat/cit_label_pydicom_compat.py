"""pydicom 3 compatibility for pydicom-seg 0.4.1 in the MONAI Label virtualenv (installed by setup_env.sh).

MONAI Label 0.8.5 imports ``pydicom_seg`` when its server starts (``monailabel.endpoints.infer`` ->
``monailabel.datastore.utils.convert``). pydicom-seg 0.4.1, the latest release, imports
``SegmentationStorage`` from ``pydicom._storage_sopclass_uids``, a private module that pydicom 3 removed
(the UIDs are in ``pydicom.uid``). This package needs pydicom 3 (its DICOM reader uses
``pydicom.pixels``), so instead of pydicom<3 the Label environment gets this finder: it answers only
for that one module name, only when no real module of that name exists (it is appended to
``sys.meta_path``), and serves ``pydicom.uid``'s storage-class UIDs under it. pydicom-seg itself is
used by MONAI Label only to read and write DICOM SEG objects, which a classification app never does.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys

NAME = "pydicom._storage_sopclass_uids"


class _StorageUidFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        return importlib.util.spec_from_loader(fullname, self) if fullname == NAME else None

    def create_module(self, spec):
        return None  # the default module object

    def exec_module(self, module):
        import pydicom.uid

        module.__dict__.update(
            {
                k: v
                for k, v in vars(pydicom.uid).items()
                if isinstance(v, pydicom.uid.UID) and not k.startswith("_")
            }
        )


if not any(isinstance(f, _StorageUidFinder) for f in sys.meta_path):
    sys.meta_path.append(_StorageUidFinder())
