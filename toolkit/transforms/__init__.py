"""Transforms: fast readers (DICOM, NIfTI, raster), a volume reader (ITK: MHA / NRRD / DICOM series),
intensity presets, the few random transforms MONAI lacks, 2D and 3D chains (a 2D bundle's loading,
augmentation and normalisation are lists of transforms in its own configs, recorded with the trained model)."""

from toolkit.transforms.augmentation import RandGaussianBlurKerneld, augmentation_steps
from toolkit.transforms.chains import classification_transforms
from toolkit.transforms.describe import describe_transform, log_transforms
from toolkit.transforms.intensity import INTENSITY_PRESETS, intensity_transforms
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
from toolkit.transforms.volumes import SelectVolumed, volume_transforms

__all__ = [
    "INTENSITY_PRESETS",
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
    "classification_transforms",
    "describe_transform",
    "find_read_error",
    "intensity_transforms",
    "log_transforms",
    "recorded_transforms",
    "training_transforms",
    "invert_intensity",
    "label_to_tensor",
    "sort_series_files",
    "volume_transforms",
]
