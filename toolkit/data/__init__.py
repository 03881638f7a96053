"""Data layer: datalists, patient-grouped splits, class weights and the synthetic demo data."""

from toolkit.data.datalist import (
    CHESTXRAY14_FINDINGS,
    build_datalist,
    from_chestxray14,
    from_class_folders,
    from_csv,
    from_dicom_folder,
    from_medmnist,
    load_datalist,
    save_datalist,
)
from toolkit.data.files import file_kind, find_image_files, is_dicom_file
from toolkit.data.splits import (
    check_no_leakage,
    class_counts,
    class_weights,
    parse_ratios,
    split_items,
    weighted_sampler,
)
from toolkit.data.synthetic import make_synthetic_dataset

__all__ = [
    "CHESTXRAY14_FINDINGS",
    "build_datalist",
    "check_no_leakage",
    "class_counts",
    "class_weights",
    "file_kind",
    "find_image_files",
    "from_chestxray14",
    "from_class_folders",
    "from_csv",
    "from_dicom_folder",
    "from_medmnist",
    "is_dicom_file",
    "load_datalist",
    "make_synthetic_dataset",
    "parse_ratios",
    "save_datalist",
    "split_items",
    "weighted_sampler",
]
