"""DicomReader on the real DICOM files in ../shared/data/dicom, driven by their manifest.csv.

Every file is decoded at most once by the reader (cached per module); MONOCHROME1 files are
decoded once more with plain pydicom for the raw comparison.
"""

from __future__ import annotations

import csv
import functools
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from monai.data import PydicomReader
from monai.transforms import Compose, EnsureChannelFirstd, LoadImage, LoadImaged, Resized, ScaleIntensityd

from toolkit.bundle import preprocessing_transforms
from toolkit.transforms import DicomReader, DicomReadError

MAX_BYTES = 5_000_000  # larger files (big JPEG 2000) are skipped: each costs seconds to decode


def _manifest(shared_data: Path) -> list[dict]:
    with open(shared_data / "dicom" / "manifest.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def manifest(shared_data) -> list[dict]:
    return _manifest(shared_data)


@pytest.fixture(scope="module")
def decode(shared_data):
    """Decode a manifest file once (frame="middle") and remember the result or the error."""
    reader = DicomReader(frame="middle")

    @functools.cache
    def run(relative: str):
        try:
            return reader.get_data(reader.read(shared_data / "dicom" / relative))
        except DicomReadError as exc:
            return exc

    return run


def _ok_rows(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r["pydicom_decode"].startswith("ok") and int(r["bytes"]) <= MAX_BYTES]


def test_manifest_has_good_and_broken_files(manifest):
    assert len(_ok_rows(manifest)) >= 40
    assert sum(r["pydicom_decode"].startswith("FAIL") for r in manifest) >= 10


def test_every_decodable_file_loads_with_manifest_shape(manifest, decode):
    for row in _ok_rows(manifest):
        result = decode(row["file"])
        assert not isinstance(result, Exception), f"{row['file']}: {result}"
        arr, meta = result
        rows, cols = int(row["rows"]), int(row["cols"])
        colour = int(row["samples_per_pixel"]) == 3 or row["photometric"] == "PALETTE COLOR"
        expected = (rows, cols, 3) if colour else (rows, cols)
        assert arr.shape == expected, row["file"]
        assert arr.dtype == np.float32
        assert np.isfinite(arr).all()
        assert meta["original_channel_dim"] == (-1 if colour else "no_channel")
        assert tuple(meta["spatial_shape"]) == (rows, cols)
        assert meta["filename_or_obj"].endswith(row["file"])
        # No patient identity in the metadata.
        assert not any("patient" in key.lower() for key in meta)


def test_monochrome1_is_inverted_relative_to_raw_pixels(manifest, decode, shared_data):
    rows = [r for r in _ok_rows(manifest) if r["photometric"] == "MONOCHROME1"]
    assert len(rows) >= 3
    for row in rows:
        arr, _ = decode(row["file"])
        ds = pydicom.dcmread(shared_data / "dicom" / row["file"], force=True)
        if "TransferSyntaxUID" not in ds.file_meta:  # ACR-NEMA file: implicit VR little endian
            ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
        raw = ds.pixel_array.astype(np.float64)
        corr = np.corrcoef(raw[::4, ::4].ravel(), arr[::4, ::4].ravel())[0, 1]
        assert corr < -0.9, f"{row['file']}: correlation with raw pixels {corr:.3f}"


def test_ct_rescale_gives_hounsfield_units(manifest, decode):
    """Rescale applied: where a CT slice shows air, it sits near -1000 HU; nothing is above bone range."""
    cts = [
        r
        for r in _ok_rows(manifest)
        if r["modality"] == "CT" and int(r["frames"] or 1) == 1 and "inverse" not in r["file"].lower()
    ]
    assert len(cts) >= 8
    with_air = 0
    for row in cts:
        arr, _ = decode(row["file"])
        assert arr.max() < 4000, f"{row['file']}: max {arr.max()} is not a plausible HU value"
        assert arr.min() >= -3500, f"{row['file']}: min {arr.min()} is not a plausible HU value"
        with_air += np.mean(np.abs(arr + 1000) < 100) > 0.1
    assert with_air >= 4  # head / chest CTs with air around the patient


def test_signed_j2k_with_unsigned_header_is_read_as_signed(decode):
    """Toshiba file: signed codestream, Pixel Representation 0 -> padding must be -2048, not 63488."""
    arr, _ = decode("ct/TOSHIBA_J2K_SIZ1_PixRep0.dcm")
    assert arr.min() == -2048 and arr.max() < 4000


def test_every_broken_file_raises_dicom_read_error_naming_it(manifest, decode):
    rows = [r for r in manifest if r["pydicom_decode"].startswith("FAIL") or r["file"].startswith("broken/")]
    assert len(rows) >= 10
    for row in rows:
        result = decode(row["file"])
        assert isinstance(result, DicomReadError), f"{row['file']} did not fail: {type(result)}"
        message = str(result)
        assert Path(row["file"]).name in message
        assert "\n" not in message


@pytest.mark.parametrize(
    ("relative", "words"),
    [
        ("broken/MR_truncated.dcm", ["less than expected"]),
        ("broken/reportsi.dcm", ["non-image", "SR"]),
        (
            "broken/monochrome_jpeg_xl.dcm",
            ["unsupported transfer syntax", "1.2.840.10008.1.2.4.110", "JPEG XL"],
        ),
        ("broken/GH1146.dcm", ["empty"]),
        ("broken/GH178.dcm", ["no Pixel Data"]),
        ("broken/badVR.dcm", ["invalid value", "1A"]),
        ("broken/RG2_JPLY.dcm", ["cannot decode"]),
    ],
)
def test_error_messages_give_the_reason(decode, relative, words):
    message = str(decode(relative))
    for word in words:
        assert word in message, message


def test_multiframe_frame_policies(shared_data):
    path = shared_data / "dicom" / "mr" / "emri_small.dcm"
    with pytest.raises(DicomReadError, match=r"emri_small\.dcm.*10 frames"):
        DicomReader().get_data(str(path))
    all_frames, meta = DicomReader(frame="all").get_data(str(path))
    assert all_frames.shape == (10, 64, 64) and meta["original_channel_dim"] == 0
    third, meta3 = DicomReader(frame=3).get_data(str(path))
    np.testing.assert_array_equal(third, all_frames[3])
    assert meta3["frame_index"] == 3
    middle, _ = DicomReader(frame="middle").get_data(str(path))
    np.testing.assert_array_equal(middle, all_frames[5])
    with pytest.raises(DicomReadError, match="out of range"):
        DicomReader(frame=10).get_data(str(path))


def test_multiframe_colour_all_frames_become_channels(shared_data):
    arr, meta = DicomReader(frame="all").get_data(str(shared_data / "dicom/other/examples_ybr_color.dcm"))
    assert arr.shape == (90, 240, 320) and meta["original_channel_dim"] == 0


def test_acr_nema_and_extensionless_files_are_recognised(shared_data):
    reader = DicomReader()
    acr = shared_data / "dicom/chest_xr/CR-MONO1-10-chest.dcm"
    assert reader.verify_suffix(acr)
    series = sorted((shared_data / "dicom/ct_series_head_16x16").iterdir())
    assert series and all(p.suffix == "" for p in series)
    assert reader.verify_suffix(series)
    assert not reader.verify_suffix(shared_data / "dicom/manifest.csv")


def test_extensionless_ct_series_loads_through_the_evaluation_chain(shared_data):
    chain = preprocessing_transforms({"image_size": 24, "intensity": "ct_window"}, label_key=None)
    series = sorted((shared_data / "dicom/ct_series_head_16x16").iterdir())
    for path in series:
        image = chain({"image": str(path)})["image"]
        assert tuple(image.shape) == (3, 24, 24) and image.dtype == torch.float32
        assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    # the reader's metadata carries the UIDs (the chain's output is a plain tensor)
    metas = [LoadImage(reader=DicomReader(), image_only=False)(str(p))[1] for p in series]
    assert all(m["sop_instance_uid"] for m in metas)
    assert len({m["series_instance_uid"] for m in metas}) == 1


def test_max_size_is_an_exact_block_average_with_scaled_spacing(shared_data):
    path = str(shared_data / "dicom/ct/CT_Explicit_Little.dcm")
    full, meta_full = DicomReader().get_data(path)
    small, meta = DicomReader(max_size=32).get_data(path)
    assert small.shape == (32, 32) and meta["shrink_factor"] == 16
    blocks = full.reshape(32, 16, 32, 16).mean(axis=(1, 3))
    np.testing.assert_allclose(small, blocks, atol=1e-3)
    np.testing.assert_allclose(meta["spacing"], np.asarray(meta_full["spacing"]) * 16)
    np.testing.assert_allclose(np.diag(meta["affine"])[:2], meta["spacing"])


@pytest.mark.parametrize(
    "relative",
    [
        "ct/CT_Explicit_Little.dcm",  # signed, rescale slope / intercept
        "chest_xr/1.3.6.1.4.1.11129.5.5.110503645592756492463169821050252582267888.dcm",  # 8-bit DX
    ],
)
def test_matches_monai_pydicom_reader_chain(shared_data, relative):
    """Uncompressed file through MONAI's PydicomReader chain and ours: equal within 1e-5 on [0, 1].

    Tolerance: both apply the same rescale and min-max scaling; MONAI may compute in float64
    before casting, we in float32, so values could differ by float32 rounding (measured
    difference on these files: 0.0); 1e-5 leaves room for other numpy / torch builds.
    ``swap_ij=False`` gives MONAI's reader our (rows, cols) layout."""
    path = str(shared_data / "dicom" / relative)

    def chain(reader):
        return Compose(
            [
                LoadImaged("image", reader=reader, image_only=True),
                EnsureChannelFirstd("image"),
                ScaleIntensityd("image"),
                Resized("image", (64, 64), mode="area"),
            ]
        )

    ours = chain(DicomReader())({"image": path})["image"]
    theirs = chain(PydicomReader(swap_ij=False))({"image": path})["image"]
    assert ours.shape == theirs.shape == (1, 64, 64)
    torch.testing.assert_close(ours.as_tensor(), theirs.as_tensor().float(), atol=1e-5, rtol=0)


def test_load_image_passes_our_error_through(shared_data):
    """LoadImaged must surface DicomReadError (not MONAI's generic 'no suitable reader')."""
    loader = LoadImaged("image", reader=DicomReader(), image_only=True)
    with pytest.raises(DicomReadError, match="reportsi.dcm"):
        loader({"image": str(shared_data / "dicom/broken/reportsi.dcm")})


def test_written_dicom_with_rescale_and_window(tmp_path):
    """A DICOM written here: slope / intercept applied; VOI window only with apply_voi=True."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    pixels = np.arange(64 * 48, dtype=np.uint16).reshape(64, 48) % 4096
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientName, ds.PatientID = "CT", "Doe^Jane", "SECRET-ID"
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 64, 48, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = 2, -1024
    ds.WindowCenter, ds.WindowWidth = 40, 80
    ds.PixelSpacing = [0.5, 0.75]
    ds.PixelData = pixels.tobytes()
    path = tmp_path / "written"  # no extension
    ds.save_as(path, enforce_file_format=True)

    arr, meta_out = DicomReader().get_data(str(path))
    np.testing.assert_array_equal(arr, pixels * 2.0 - 1024)
    assert tuple(meta_out["spacing"]) == (0.5, 0.75)
    assert "SECRET-ID" not in repr(meta_out) and "Doe" not in repr(meta_out)
    windowed, _ = DicomReader(apply_voi=True).get_data(str(path))
    assert np.unique(windowed).size < np.unique(arr).size  # clipped to the window


def test_jpeg2000_reduced_resolution_decode_matches_full_decode(decode, shared_data):
    """max_size on a 1760 px JPEG 2000 CR: decoded at wavelet level 4 (16x smaller) instead of
    fully. The level samples around every 16th pixel, half a block off the box average, so it
    is compared with 16x16 box averages of the full decode centred on those pixels."""
    full, _ = decode("radiography_other/RG3_J2KR.dcm")
    path = str(shared_data / "dicom/radiography_other/RG3_J2KR.dcm")
    small, meta = DicomReader(max_size=110).get_data(path)
    assert small.shape == (110, 110) and meta["shrink_factor"] == 16
    shifted = np.pad(full, ((8, 0), (8, 0)), mode="edge")[:1760, :1760]
    aligned = shifted.reshape(110, 16, 110, 16).mean(axis=(1, 3))
    assert np.corrcoef(aligned.ravel(), small.ravel())[0, 1] > 0.995
    assert np.abs(small - aligned).mean() / float(full.max() - full.min()) < 0.01

    exact, meta_exact = DicomReader(max_size=110, j2k_reduce=False).get_data(path)
    np.testing.assert_allclose(exact, full.reshape(110, 16, 110, 16).mean(axis=(1, 3)), atol=1e-2)
    assert meta_exact["shrink_factor"] == 16


def test_max_size_works_for_every_transfer_syntax_of_the_same_image(shared_data):
    """MR_small in six encodings (incl. big endian, RLE, JPEG-LS, JPEG 2000) shrinks identically."""
    names = [
        "MR_small",
        "MR_small_implicit",
        "MR_small_bigendian",
        "MR_small_RLE",
        "MR_small_jpeg_ls_lossless",
        "MR_small_jp2klossless",
    ]
    arrays = [DicomReader(max_size=16).get_data(str(shared_data / f"dicom/mr/{n}.dcm"))[0] for n in names]
    for name, arr in zip(names, arrays, strict=True):
        assert arr.shape == (16, 16), name
        np.testing.assert_array_equal(arr, arrays[0], err_msg=name)


def test_a_decoder_panic_is_a_read_error_not_a_crash(tmp_path):
    """pylibjpeg-rle (Rust) panics on some corrupt RLE streams; PyO3 raises PanicException, a
    BaseException that MONAI's transforms and every `except Exception` let through. The reader turns it
    into the file's DicomReadError. The corrupt stream is found by seeded random byte flips."""
    import copy
    import random

    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, RLELossless, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.Rows = ds.Columns = 32
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = (np.arange(1024, dtype=np.uint16) % 4096).tobytes()
    ds.compress(RLELossless)
    rng, clean = random.Random(0), bytes(ds.PixelData)
    for _ in range(200):
        corrupt = bytearray(clean)
        for _ in range(rng.randint(1, 6)):
            corrupt[rng.randrange(len(corrupt))] = rng.randrange(256)
        trial = copy.deepcopy(ds)
        trial.PixelData = bytes(corrupt)
        try:
            _ = trial.pixel_array
        except Exception:  # an ordinary decode error: not the case under test
            continue
        except BaseException as exc:  # the panic
            assert type(exc).__name__ == "PanicException"
            break
    else:
        pytest.skip("no corrupt stream made the decoder panic (a fixed decoder version)")
    path = tmp_path / "panic.dcm"
    trial.save_as(path, enforce_file_format=True)
    with pytest.raises(DicomReadError, match="decoder crashed"):
        DicomReader().get_data(str(path))
