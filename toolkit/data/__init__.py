"""Data layer: datalists (read by the format modules in ``sources``), patient-grouped splits,
class weights and the synthetic demo data. The data-set audit is ``toolkit.data.audit``,
imported directly."""

from toolkit.data.datalist import build_datalist, load_datalist, save_datalist, split_keys, summarize
from toolkit.data.files import file_kind, find_image_files, is_dicom_file
from toolkit.data.sources import (
    CHESTXRAY14_FINDINGS,
    from_chestxray14,
    from_class_folders,
    from_csv,
    from_dicom_folder,
    from_medmnist,
)
from toolkit.data.splits import (
    check_no_leakage,
    class_counts,
    class_weights,
    parse_ratios,
    sample_weights,
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
    "sample_weights",
    "save_datalist",
    "split_items",
    "split_keys",
    "summarize",
    "weighted_sampler",
]
