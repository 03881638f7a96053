"""Transforms: fast readers (DICOM, NIfTI, raster), a volume reader (ITK: MHA / NRRD / DICOM series),
intensity and augmentation presets, 2D and 3D chains."""

from toolkit.transforms.augmentation import (
    AUGMENTATION_PRESETS,
    COVID_MINORITY_KINDS,
    RandGaussianBlurKerneld,
    augmentation_transforms,
    covid_minority_synthesis,
)
from toolkit.transforms.chains import classification_transforms
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
from toolkit.transforms.volumes import VOLUME_AUGMENTATION_PRESETS, SelectVolumed, volume_transforms

__all__ = [
    "AUGMENTATION_PRESETS",
    "COVID_MINORITY_KINDS",
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
    "ReadLimits",
    "ResourceLimitError",
    "SelectSlice",
    "SelectSliced",
    "SelectVolumed",
    "VOLUME_AUGMENTATION_PRESETS",
    "VolumeReader",
    "augmentation_transforms",
    "classification_transforms",
    "covid_minority_synthesis",
    "find_read_error",
    "intensity_transforms",
    "invert_intensity",
    "label_to_tensor",
    "sort_series_files",
    "volume_transforms",
]
