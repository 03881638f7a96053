"""Benchmark DICOM reading to a 224 px network input; prints JSON.

Writes N 2048x2048 16-bit uncompressed DICOMs (and one JPEG 2000 lossless copy) to a temporary
folder and measures CPU milliseconds per image (median over the files, one torch thread) for:

  a) ``pydicom_torch``: pydicom ``dcmread`` + ``pixel_array`` + torch area resize to 224 + [0, 1]
     (the floor: what any reader must do);
  b) ``ours``: the evaluation chain of a model recorded with ``image_size`` 224, ``channels`` 1,
     ``reader_max_size`` 224 (``toolkit.bundle.preprocessing_transforms``: DicomReader with early
     shrinking + channel-first + resize + min-max), plus the same chain without ``reader_max_size``
     (``ours_no_max_size``);
  c) ``monai_pydicom``: MONAI ``LoadImage(PydicomReader)`` + ``EnsureChannelFirst`` +
     ``ScaleIntensity`` + ``Resize(224)``;

and the ratio b / a (target <= 1.5). Usage: ``python scripts/bench_readers.py [--n 8] [--repeats 2]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def write_dicoms(folder: Path, n: int, size: int = 2048) -> list[Path]:
    """Write ``n`` synthetic 16-bit MONOCHROME2 DX images (smooth blobs + noise) with pydicom."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    paths = []
    for i in range(n):
        img = 2000 + 1500 * np.sin(6 * xx + i) * np.cos(4 * yy) + rng.normal(0, 50, (size, size))
        pixels = np.clip(img, 0, 4095).astype(np.uint16)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        ds.SeriesInstanceUID, ds.StudyInstanceUID = generate_uid(), generate_uid()
        ds.Modality = "DX"
        ds.Rows, ds.Columns = size, size
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.ImagerPixelSpacing = [0.139, 0.139]
        ds.PixelData = pixels.tobytes()
        path = folder / f"dx_{i:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_jpeg2000(src: Path, folder: Path) -> Path | None:
    """JPEG 2000 lossless copy of ``src`` (None if no encoder plugin is installed)."""
    import pydicom
    from pydicom.uid import JPEG2000Lossless

    ds = pydicom.dcmread(src)
    try:
        ds.compress(JPEG2000Lossless)
    except Exception:  # no JPEG 2000 encoder available
        return None
    path = folder / "dx_j2k.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def pydicom_torch(path: Path, size: int = 224) -> torch.Tensor:
    import pydicom

    arr = pydicom.dcmread(path).pixel_array
    t = torch.from_numpy(arr.astype(np.float32))[None, None]
    t = torch.nn.functional.interpolate(t, size=(size, size), mode="area")[0]
    t -= t.min()
    return t / t.max().clamp_min(1e-8)


def time_per_image(fn, paths: list[Path], repeats: int) -> float:
    fn(paths[0])  # warm-up (imports, plugin look-up)
    times = []
    for _ in range(repeats):
        for p in paths:
            start = time.process_time()
            fn(p)
            times.append((time.process_time() - start) * 1000)
    return round(statistics.median(times), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=8, help="number of 2048 px DICOM files")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from monai.data import PydicomReader
    from monai.transforms import Compose, EnsureChannelFirst, LoadImage, Resize, ScaleIntensity

    from toolkit.bundle import preprocessing_transforms

    record = {"image_size": 224, "channels": 1}
    ours = preprocessing_transforms({**record, "reader_max_size": 224}, label_key=None)
    ours_full = preprocessing_transforms(record, label_key=None)
    monai_chain = Compose(
        [
            LoadImage(reader=PydicomReader(), image_only=True),
            EnsureChannelFirst(),
            ScaleIntensity(),
            Resize((224, 224)),
        ]
    )

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        paths = write_dicoms(folder, args.n)
        j2k = write_jpeg2000(paths[0], folder)
        result = {
            "n_files": args.n,
            "image": "2048x2048 16-bit (12 stored) uncompressed DX",
            "threads": args.threads,
            "ms_per_image_cpu": {
                "a_pydicom_torch": time_per_image(pydicom_torch, paths, args.repeats),
                "b_ours": time_per_image(lambda p: ours({"image": str(p)}), paths, args.repeats),
                "b_ours_no_max_size": time_per_image(
                    lambda p: ours_full({"image": str(p)}), paths, args.repeats
                ),
                "c_monai_pydicom": time_per_image(monai_chain, paths, args.repeats),
            },
        }
        ms = result["ms_per_image_cpu"]
        result["ratio_b_over_a"] = round(ms["b_ours"] / ms["a_pydicom_torch"], 2)
        result["ratio_c_over_b"] = round(ms["c_monai_pydicom"] / ms["b_ours"], 2)
        if j2k is not None:
            result["jpeg2000_lossless_ms"] = {
                "a_pydicom_torch": time_per_image(pydicom_torch, [j2k], 1),
                "b_ours": time_per_image(lambda p: ours({"image": str(p)}), [j2k], 1),
            }
        # Sanity: the two fast paths agree on the same file (both area-averaged to 224).
        a = pydicom_torch(paths[0])
        b = ours({"image": str(paths[0])})["image"]
        result["max_abs_diff_a_vs_b"] = round(float((a - b).abs().max()), 4)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
