"""Transforms: fast readers (DICOM, NIfTI, raster), a volume reader (ITK: MHA / NRRD / DICOM series),
the few transforms MONAI lacks, and the chain as data (a bundle's loading, augmentation and
normalisation are lists of transforms in its own configs; the evaluation chain is recorded with the
trained model and rebuilt from that record, :mod:`toolkit.transforms.recorded`)."""

from toolkit.transforms.augmentation import RandGaussianBlurKerneld, augmentation_steps
from toolkit.transforms.describe import describe_transform, log_transforms
from toolkit.transforms.limits import ReadLimits
from toolkit.transforms.readers import (
    DicomLimitError,
    DicomReader,
    DicomReadError,
    ImageReadError,
    MedicalImageReader,
    NiftiReader,
    RasterReader,
    ResourceLimitError,
    find_read_error,
)
from toolkit.transforms.recorded import RecordedChainError, recorded_transforms, training_transforms
from toolkit.transforms.utility import (
    AsChannels,
    AsChannelsd,
    LabelToTensord,
    SelectSlice,
    SelectSliced,
    invert_intensity,
    label_to_tensor,
)
from toolkit.transforms.volume_reader import VolumeReader, sort_series_files
from toolkit.transforms.volumes import SelectVolumed

__all__ = [
    "LabelToTensord",
    "AsChannels",
    "AsChannelsd",
    "DicomLimitError",
    "DicomReadError",
    "DicomReader",
    "ImageReadError",
    "MedicalImageReader",
    "NiftiReader",
    "RandGaussianBlurKerneld",
    "RasterReader",
    "RecordedChainError",
    "ReadLimits",
    "ResourceLimitError",
    "SelectSlice",
    "SelectSliced",
    "SelectVolumed",
    "VolumeReader",
    "augmentation_steps",
    "describe_transform",
    "find_read_error",
    "log_transforms",
    "recorded_transforms",
    "training_transforms",
    "invert_intensity",
    "label_to_tensor",
    "sort_series_files",
]
