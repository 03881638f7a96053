"""A batch may mix file formats and colour modes (real sets do): the chains' outputs must collate."""

import numpy as np
import pydicom
import pytest
from monai.data import DataLoader, Dataset
from PIL import Image
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from tests.bundles.bundle_helpers import bundle_recipe
from toolkit.bundle import preprocessing_transforms


def _write_dicom(path):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.Rows, ds.Columns = "CT", 40, 48
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = np.random.default_rng(0).integers(0, 4096, (40, 48), dtype=np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


@pytest.mark.parametrize("stage", ["train", "eval"])
def test_grey_rgb_and_dicom_images_collate_into_one_batch(tmp_path, stage):
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (30, 50), dtype=np.uint8)).save(tmp_path / "grey.png")
    Image.fromarray(rng.integers(0, 255, (60, 40, 3), dtype=np.uint8)).save(tmp_path / "rgb.jpg")
    Image.fromarray(rng.integers(0, 65535, (20, 20), dtype=np.uint16)).save(tmp_path / "deep.png")
    _write_dicom(tmp_path / "ct")
    items = [
        {"image": str(tmp_path / n), "label": i % 3}
        for i, n in enumerate(["rgb.jpg", "grey.png", "deep.png", "ct"])
    ]
    recipe = bundle_recipe("resnet18_brain_ct", image_size=32)  # its training chain, or the one it records
    chain = (
        recipe.get_parsed_content("train_transforms")
        if stage == "train"
        else preprocessing_transforms(recipe.get_parsed_content("evaluation_preprocessing"))
    )
    batch = next(iter(DataLoader(Dataset(items, chain), batch_size=4)))
    assert tuple(batch["image"].shape) == (4, 3, 32, 32)
    assert batch["label"].tolist() == [0, 1, 2, 0]
