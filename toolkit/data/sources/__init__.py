"""Dataset sources: one module per on-disk format, each reading a data set into datalist items.

Every ``*_items`` function returns a :class:`SourceItems` (items, labels, multi_label, kind), so
``toolkit.data.datalist.build_datalist`` splits and saves any format the same way; the
``from_*`` functions return just the items, for callers that only want those.

- ``class_folders``: ``root/[split/]<class>/...`` trees of PNG / JPEG / DICOM / NIfTI files
- ``csv_manifest``: a CSV with one row per image
- ``chestxray14``: NIH ChestX-ray14's ``Data_Entry_2017.csv`` (14 findings, multi-label)
- ``medmnist``: MedMNIST ``.npz`` arrays, exported to image files
- ``dicom_folder``: a DICOM export labelled by a CSV keyed by a DICOM attribute
- ``presets``: labels and patient ids parsed from file names (Kermany CXR)
"""

from toolkit.data.sources.base import SourceItems
from toolkit.data.sources.chestxray14 import CHESTXRAY14_FINDINGS, chestxray14_items, from_chestxray14
from toolkit.data.sources.class_folders import class_folder_items, from_class_folders
from toolkit.data.sources.csv_manifest import csv_items, from_csv, manifest_items
from toolkit.data.sources.dicom_folder import dicom_folder_items, from_dicom_folder
from toolkit.data.sources.medmnist import from_medmnist, medmnist_items

__all__ = [
    "CHESTXRAY14_FINDINGS",
    "SourceItems",
    "chestxray14_items",
    "class_folder_items",
    "csv_items",
    "dicom_folder_items",
    "from_chestxray14",
    "from_class_folders",
    "from_csv",
    "from_dicom_folder",
    "from_medmnist",
    "manifest_items",
    "medmnist_items",
]
