"""Small files that declare huge images (issue 26, item 1) and corrupt JPEGs (item 10), written in a few
hundred milliseconds each without ever holding what they declare in memory: streamed zlib / gzip of
zeros, headers written by hand, a sparse file. Used by tests/inference/test_infer_resource_limits.py and
scripts/bench_resource_limits.py.

``write_bombs(folder)`` returns ``{relative path: words the error reason must hold}``."""

from __future__ import annotations

import gzip
import io
import struct
import zlib
from pathlib import Path

import numpy as np

MiB = 1 << 20
CHUNK = 4 * MiB


def _zeros_stream(compressor, n: int) -> bytes:
    """``n`` zero bytes through ``compressor`` (a zlib compressobj), in chunks."""
    out, zero = [], bytes(CHUNK)
    while n > 0:
        out.append(compressor.compress(zero[: min(n, CHUNK)]))
        n -= CHUNK
    return b"".join(out)


def _uid(*parts) -> str:
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=[str(p) for p in parts])


def _image_dataset(rows: int, columns: int, transfer_syntax: str, name: str):
    """A secondary-capture header (8-bit grey) without pixel data."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import SecondaryCaptureImageStorage

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = _uid("sop", name)
    meta.TransferSyntaxUID = transfer_syntax
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = _uid("study", name), _uid("series", name)
    ds.Modality = "OT"
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    return ds


def deflated_dicom_bomb(path: Path, inflated: int = 256 * MiB) -> None:
    """Deflated Explicit VR Little Endian: a 64 x 64 image whose data set holds a zero-filled private
    element of ``inflated`` bytes before the pixel data (800 MB deflate to ~780 KB)."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset, write_file_meta_info
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    ds = _image_dataset(64, 64, DeflatedExplicitVRLittleEndian, path.name)
    head, body = DicomBytesIO(), DicomBytesIO()
    for fp in (head, body):
        fp.is_little_endian, fp.is_implicit_VR = True, False
    head.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(head, ds.file_meta, enforce_standard=True)
    write_dataset(body, ds)
    creator = b"BOMB"
    body.write(struct.pack("<HH2sH", 0x0029, 0x0010, b"LO", len(creator)) + creator)
    body.write(struct.pack("<HH2sHI", 0x0029, 0x1001, b"OB", 0, inflated))
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    data = compressor.compress(body.getvalue()) + _zeros_stream(compressor, inflated)
    pixels = bytes(64 * 64)
    data += compressor.compress(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, len(pixels)) + pixels)
    path.write_bytes(head.getvalue() + data + compressor.flush())


def _encapsulated_dicom(path: Path, side: int, transfer_syntax: str, codestream: bytes) -> None:
    from pydicom.encaps import encapsulate

    ds = _image_dataset(side, side, transfer_syntax, path.name)
    ds.PixelData = encapsulate([codestream])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)


def jpeg_ls_header(side: int) -> bytes:
    """SOI + SOF55 (JPEG-LS) declaring ``side`` x ``side`` 8-bit grey, then a few bytes of scan."""
    sof = struct.pack(">BHHB", 8, side, side, 1) + bytes([1, 0x11, 0])
    sos = struct.pack(">B", 1) + bytes([1, 0]) + bytes([0, 0, 0])
    return (
        b"\xff\xd8\xff\xf7"
        + struct.pack(">H", len(sof) + 2)
        + sof
        + b"\xff\xda"
        + struct.pack(">H", len(sos) + 2)
        + sos
        + bytes(8000)
        + b"\xff\xd9"
    )


def j2k_header(side: int) -> bytes:
    """SOC + SIZ declaring ``side`` x ``side`` 8-bit grey (one tile), then a few bytes."""
    siz = struct.pack(">HIIIIIIIIH", 0, side, side, 0, 0, side, side, 0, 0, 1) + bytes([7, 1, 1])
    return b"\xff\x4f\xff\x51" + struct.pack(">H", len(siz) + 2) + siz + bytes(8000) + b"\xff\xd9"


def nifti_bomb(path: Path, shape=(1024, 1024, 512)) -> None:
    """A .nii.gz of zeros (uint8) of ``shape``: 512 Mi voxels in ~0.5 MB."""
    import nibabel as nib

    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.uint8)
    header.set_qform(np.eye(4), code=1)
    header["vox_offset"] = 352
    raw = io.BytesIO()
    header.write_to(raw)
    raw.write(b"\x00" * (352 - raw.tell()))
    with open(path, "wb") as f, gzip.GzipFile(fileobj=f, mode="wb", compresslevel=1, mtime=0) as gz:
        gz.write(raw.getvalue())
        n, zero = int(np.prod(shape)), bytes(CHUNK)
        while n > 0:
            gz.write(zero[: min(n, CHUNK)])
            n -= CHUNK


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def png_bomb(path: Path, width: int, height: int, bit_depth: int = 8) -> None:
    """A grey PNG of zeros, ``width`` x ``height`` (13000 x 13000 = 169 MP, under Pillow's 179 MP error)."""
    row = 1 + (width * bit_depth + 7) // 8  # filter byte + samples
    compressor = zlib.compressobj(9)
    data = _zeros_stream(compressor, row * height) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", data)
        + _png_chunk(b"IEND", b"")
    )


def bmp_rle_bomb(path: Path, side: int = 13000) -> None:
    """An 8-bit RLE-compressed BMP of zeros, ``side`` x ``side`` (13000: 169 MP in ~1.3 MB)."""
    runs = b"".join(bytes([min(255, side - x), 0]) for x in range(0, side, 255))
    pixels = (runs + b"\x00\x00") * side + b"\x00\x01"  # end of each line, end of bitmap
    palette = b"".join(bytes([i, i, i, 0]) for i in range(256))
    offset = 14 + 40 + len(palette)
    info = struct.pack("<IiiHHIIiiII", 40, side, side, 1, 8, 1, len(pixels), 2835, 2835, 256, 0)
    path.write_bytes(
        b"BM" + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset) + info + palette + pixels
    )


def jpeg_bytes(seed: int = 0, size: int = 256, colour: bool = False) -> bytes:
    """A real JPEG (smooth gradient + noise) of ``size`` px."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    x = np.linspace(0, 255, size)
    grey = (np.add.outer(x, x) / 2 + rng.normal(0, 20, (size, size))).clip(0, 255).astype(np.uint8)
    arr = np.stack([grey, grey[::-1], grey.T], -1) if colour else grey
    buffer = io.BytesIO()
    Image.fromarray(arr).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def truncated_jpeg(data: bytes, keep: float = 0.1) -> bytes:
    """The first ``keep`` of a JPEG with an end-of-image marker appended (as a cut transfer leaves it)."""
    return data[: int(len(data) * keep)] + b"\xff\xd9"


def corrupt_jpeg(data: bytes) -> bytes:
    """A JPEG whose entropy-coded data has bytes changed in its middle (no 0xFF written)."""
    out = bytearray(data)
    middle = len(out) // 2
    for i in range(middle, min(len(out), middle + 200), 7):
        out[i] = (out[i] + 0x55) % 0xFF
    return bytes(out)


def write_bombs(folder: Path, deflated: int = 256 * MiB) -> dict[str, list[str]]:
    """One file of each kind below ``folder``; returns ``{relative path: words its reason must hold}``."""
    from pydicom.uid import JPEG2000Lossless, JPEGLSLossless

    folder.mkdir(parents=True, exist_ok=True)
    expected: dict[str, list[str]] = {}

    def add(name: str, *words: str) -> Path:
        expected[name] = list(words)
        return folder / name

    deflated_dicom_bomb(add("deflated.dcm", "inflates to more than", "CIT_MAX_DICOM_MB"), deflated)
    _encapsulated_dicom(
        add("jpegls.dcm", "20,000 x 20,000", "CIT_MAX_PIXELS"), 20000, JPEGLSLossless, jpeg_ls_header(20000)
    )
    _encapsulated_dicom(
        add("j2k.dcm", "20,000 x 20,000", "CIT_MAX_PIXELS"), 20000, JPEG2000Lossless, j2k_header(20000)
    )
    nifti_bomb(add("volume.nii.gz", "1,024 x 1,024 x 512", "CIT_MAX_VOXELS"))
    png_bomb(add("square.png", "13,000 x 13,000", "CIT_MAX_PIXELS"), 13000, 13000, bit_depth=1)
    png_bomb(add("line.png", "170,000,000", "CIT_MAX_PIXELS"), 170_000_000, 1, bit_depth=1)
    bmp_rle_bomb(add("square.bmp", "13,000 x 13,000", "CIT_MAX_PIXELS"))
    with open(add("sparse.dcm", "on disk", "CIT_MAX_DICOM_MB"), "wb") as f:
        f.truncate(200 * MiB)
    good = jpeg_bytes(1)
    add("cut.jpg", "JPEG").write_bytes(truncated_jpeg(good))
    add("corrupt.jpg", "JPEG").write_bytes(corrupt_jpeg(jpeg_bytes(2, colour=True)))
    return expected
