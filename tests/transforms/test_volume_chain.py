"""The 3D chain (resnet3d_adrenal's ``loading`` in its train.json, as a model trained with it rebuilds it) on
the real volumes in ../shared/data/nifti, the CT series in ../shared/data/dicom and MHA / NRRD files written
here with ITK."""

from __future__ import annotations

import shutil

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import Randomizable

from tests.bundles.bundle_helpers import bundle_recipe
from toolkit.bundle import load_model_info, preprocessing_transforms, write_model_info
from toolkit.data import make_synthetic_dataset
from toolkit.data.datalist import load_datalist
from toolkit.transforms import ImageReadError, find_read_error
from toolkit.transforms.volumes import volume_size

SIZE = 24


# a CT window instead of the bundle's min-max, overridden as on the command line (--loading#6 ...)
CT_WINDOW = {
    "loading#6": {
        "_target_": "ScaleIntensityRanged",
        "_mode_": "callable",
        "keys": "image",
        **{"a_min": -160.0, "a_max": 240.0, "b_min": 0.0, "b_max": 1.0, "clip": True},
    }
}


def _recipe(**ids):
    return bundle_recipe("resnet3d_adrenal", **{"image_size": SIZE, **ids})


def _chain(**ids):
    """The bundle's evaluation chain (``ids`` override its train.json), rebuilt from its record."""
    return preprocessing_transforms(
        _recipe(**ids).get_parsed_content("evaluation_preprocessing"), label_key=None
    )


def _image(chain, source) -> torch.Tensor:
    return chain({"image": source})["image"]


def _read_error(chain, source) -> ImageReadError:
    with pytest.raises(Exception) as caught:
        chain({"image": source})
    found = find_read_error(caught.value)
    assert found is not None, f"no ImageReadError behind {caught.value!r}"
    return found


def test_volumes_stored_in_other_voxel_orders_give_the_same_array(shared_data):
    folder = shared_data / "nifti" / "orientation"
    chain = _chain()
    ras = _image(chain, str(folder / "RAS.nii.gz"))
    assert tuple(ras.shape) == (1, SIZE, SIZE, SIZE) and ras.dtype == torch.float32
    assert float(ras.min()) == 0.0 and float(ras.max()) == pytest.approx(1.0, abs=0.05)
    for name in ("LPS.nii.gz", "AIL.nii.gz"):  # flipped axes / permuted axes in the header
        other = _image(chain, str(folder / name))
        torch.testing.assert_close(other, ras, atol=1e-5, rtol=0)
    # the stored arrays really differ: without reorientation the chain would not agree
    stored = [np.asanyarray(nib.load(folder / n).dataobj) for n in ("RAS.nii.gz", "LPS.nii.gz")]
    assert not np.array_equal(stored[0], stored[1])


def _extent(volume: np.ndarray, axis: int) -> int:
    """Number of slices along ``axis`` holding any voxel above zero."""
    others = tuple(a for a in range(volume.ndim) if a != axis)
    filled = np.flatnonzero(volume.max(axis=others) > 0)
    return int(filled[-1] - filled[0] + 1)


@pytest.mark.parametrize("spacing", [4.0, 6.0])
def test_the_spacing_recorded_in_the_model_description_is_applied(shared_data, tmp_path, spacing):
    path = shared_data / "nifti" / "orientation" / "RAS.nii.gz"
    image = nib.load(path)
    stored, voxel = np.asanyarray(image.dataobj), image.header.get_zooms()[:3]
    preprocessing = _recipe(image_size=48, spacing=spacing, fit="pad_crop").get_parsed_content(
        "evaluation_preprocessing"
    )
    network = {"name": "resnet18", "num_classes": 2, "in_channels": 1, "spatial_dims": 3}
    info = write_model_info(tmp_path, network, ["a", "b"], preprocessing)
    out = load_model_info(tmp_path).preprocessing_transforms(label_key=None)({"image": str(path)})["image"]
    assert info.preprocessing["spacing"] == spacing and tuple(out.shape) == (1, 48, 48, 48)
    for axis in range(3):  # physical extent / new voxel size, within a voxel of resampling blur
        expected = _extent(stored, axis) * float(voxel[axis]) / spacing
        assert abs(_extent(out[0].numpy(), axis) - expected) <= 2, (axis, expected)


def test_a_3d_network_with_2d_preprocessing_is_refused(tmp_path):
    with pytest.raises(ValueError, match="network is 3D but the preprocessing 2D"):
        write_model_info(
            tmp_path,
            {"name": "resnet18", "num_classes": 2, "spatial_dims": 3},
            ["a", "b"],
            {"image_size": 16},
        )


def test_a_dicom_series_reads_alike_as_a_folder_and_as_files_in_any_order(shared_data):
    folder = shared_data / "dicom" / "ct_series_head_16x16"
    files = sorted(str(p) for p in folder.iterdir())
    chain = _chain(**CT_WINDOW)
    from_folder = _image(chain, str(folder))
    assert tuple(from_folder.shape) == (1, SIZE, SIZE, SIZE)
    assert 0.0 <= float(from_folder.min()) and float(from_folder.max()) <= 1.0  # HU windowed
    assert float(from_folder.std()) > 0.05  # an image, not a constant
    torch.testing.assert_close(_image(chain, files[::-1]), from_folder)
    torch.testing.assert_close(_image(chain, [files[2], files[0], files[3], files[1]]), from_folder)


def test_mha_and_nrrd_files_give_the_nifti_result(shared_data, tmp_path):
    import itk

    source = shared_data / "nifti" / "orientation" / "LPS.nii.gz"
    volume = itk.imread(str(source))
    chain = _chain()
    expected = _image(chain, str(source))
    for name in ("volume.mha", "volume.nrrd"):
        itk.imwrite(volume, str(tmp_path / name))
        torch.testing.assert_close(_image(chain, str(tmp_path / name)), expected, atol=1e-5, rtol=0)


def test_rgb_volume_becomes_one_grey_channel(shared_data):
    out = _image(_chain(), str(shared_data / "nifti" / "ct" / "ct_perfusion.nii.gz"))
    assert tuple(out.shape) == (1, SIZE, SIZE, SIZE) and float(out.max()) > 0


def test_a_4d_time_series_is_refused_unless_a_volume_is_chosen(shared_data):
    path = str(shared_data / "nifti" / "brain_4d" / "example4d.nii.gz")
    error = _read_error(_chain(), path)
    assert "4D image (2 volumes" in error.reason and error.filename == path
    first, second = (_image(_chain(**{"loading#2#volume": v}), path) for v in (0, 1))
    assert tuple(first.shape) == (1, SIZE, SIZE, SIZE) and not torch.equal(first, second)
    assert "out of range for 2 volumes" in _read_error(_chain(**{"loading#2#volume": 5}), path).reason


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        ("dicom/ct_series_head_16x16/7106", "a single 2D DICOM image (modality CT)"),
        ("dicom/chest_xr", "belong to 4 DICOM series"),
        ("kermany_cxr_224/test/NORMAL/IM-0001-0001.jpeg", "a 2D image (PNG / JPEG"),
        ("nifti/manifest.csv", "unknown volume format"),
    ],
)
def test_inputs_that_are_not_one_volume_are_refused_with_a_reason(shared_data, source, reason):
    assert reason in _read_error(_chain(), str(shared_data / source)).reason


def test_a_broken_slice_in_a_series_names_that_file(shared_data, tmp_path):
    series = tmp_path / "series"
    shutil.copytree(shared_data / "dicom" / "ct_series_head_16x16", series)
    broken = series / "7166"
    broken.write_bytes(broken.read_bytes()[:1500])  # header cut off in the middle
    error = _read_error(_chain(), str(series))
    assert error.filename is not None and error.reason


def test_an_image_size_that_is_not_a_cube_or_3_sides_is_refused():
    with pytest.raises(ValueError, match="image_size must be one positive int"):
        volume_size((16, 16))
    with pytest.raises(RuntimeError) as info:  # MONAI's parser names the expression, its cause the value
        _chain(image_size=[16, 16])
    assert "image_size must be one positive int" in str(info.value.__cause__)


def test_training_chain_augments_after_the_cached_steps(tmp_path):
    datalist = make_synthetic_dataset(
        tmp_path,
        n_patients=4,
        images_per_patient=1,
        image_size=20,
        seed=3,
        classes=["normal", "hyperplasia"],
        spatial_dims=3,
    )
    item = load_datalist(datalist)["training"][0]
    chain = bundle_recipe("resnet3d_adrenal", image_size=20).get_parsed_content("train_transforms")
    random_at = [i for i, t in enumerate(chain.transforms) if isinstance(t, Randomizable)]
    assert random_at and random_at == list(range(random_at[0], random_at[-1] + 1))  # one random block ...
    assert all(
        not isinstance(t, Randomizable) for t in chain.transforms[random_at[-1] + 1 :]
    )  # ... then typing
    chain.set_random_state(0)
    views = [chain(dict(item))["image"] for _ in range(3)]
    assert all(tuple(v.shape) == (1, 20, 20, 20) for v in views)
    assert not torch.equal(views[0], views[1]) or not torch.equal(views[1], views[2])
    assert chain(dict(item))["label"].dtype == torch.int64
