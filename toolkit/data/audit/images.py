"""One image: header facts, content and perceptual hashes, thumbnail, and the near-duplicate confirmation."""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor

import imagehash
import numpy as np
from PIL import Image

from toolkit.data.files import file_kind
from toolkit.data.headers import dicom_header, nifti_header, raster_header

# ``read_image(path)`` returns the decoded pixels: (H, W) grey, (H, W, C) colour, or a NIfTI volume;
# it raises OSError or ValueError for a file it cannot read (the readers' ImageReadError is a ValueError).
ReadImage = Callable[[str], np.ndarray]

# Two-stage near-duplicate test: 64-bit pHashes within DEFAULT_HAMMING bits make a candidate pair,
# confirmed when the 256-bit pHashes (16x16 DCT of the 64x64 thumbnail) under the matched transform
# differ in at most DEFAULT_CONFIRM bits. On the shared data the 64-bit hash alone matched different
# children's chest X-rays (all at >= 42 of 256 bits), while re-windowed / mirrored copies of one
# brain MRI slice stay within ~30 (docs/data-audit.md).
DEFAULT_HAMMING = 6
DEFAULT_CONFIRM = 32
# Pixel confirmation: the mean absolute difference of the two 32x32 grey thumbnails (b under the
# matched transform), each scaled to zero mean and unit standard deviation, so a re-windowed copy
# (another brightness / contrast) still matches. Measured on the shared data (docs/data-audit.md):
# the 9 brain-MRI copies that labels.csv flags are <= 0.02, all 236 pairs the 256-bit hash accepts
# there are <= 0.225, including re-windowed copies whose plain 32 px difference is 49 of 255;
# pairs that must not match (1,743: different classes, or different Kermany children) are >= 0.189.
DEFAULT_PIXEL = 0.25
PIXEL_SIZE = 32
THUMB = 64  # grey thumbnail kept per image: input of both hashes and of the pixel check
# The 8 symmetries of the square: how augmented copies are usually made.
TRANSFORMS = ("identity", "rot90", "rot180", "rot270", "flip", "flip+rot90", "flip+rot180", "flip+rot270")


def _dihedral(thumb: np.ndarray) -> list[np.ndarray]:
    flipped = np.fliplr(thumb)
    return [np.rot90(thumb, k) for k in range(4)] + [np.rot90(flipped, k) for k in range(4)]


def _phash64(thumb: np.ndarray) -> int:
    """64-bit pHash (imagehash: 8x8 DCT of a 32x32 resize) as an int."""
    bits = imagehash.phash(Image.fromarray(np.ascontiguousarray(thumb))).hash.ravel()
    return int(np.packbits(bits).view(">u8")[0])


def phash256_distance(a: np.ndarray, b: np.ndarray, transform: int = 0) -> int:
    """Bits in which the 256-bit pHashes of two thumbnails differ, ``b`` under ``TRANSFORMS[transform]``."""
    ha = imagehash.phash(Image.fromarray(np.ascontiguousarray(a)), hash_size=16)
    hb = imagehash.phash(Image.fromarray(np.ascontiguousarray(_dihedral(b)[transform])), hash_size=16)
    return int(ha - hb)


def pixel_difference(a: np.ndarray, b: np.ndarray, transform: int = 0) -> float:
    """Mean absolute difference of two thumbnails at ``PIXEL_SIZE`` px, ``b`` under
    ``TRANSFORMS[transform]``, each scaled to mean 0 and standard deviation 1 (in SD units: 0 for
    the same picture at any brightness / contrast, about 1.1 for unrelated noise)."""

    def normalised(thumb: np.ndarray) -> np.ndarray:
        small = Image.fromarray(np.ascontiguousarray(thumb)).resize(
            (PIXEL_SIZE, PIXEL_SIZE), Image.Resampling.BOX
        )
        x = np.asarray(small, dtype=np.float64)
        sd = x.std()
        return (x - x.mean()) / (sd if sd > 0 else 1.0)

    return float(np.abs(normalised(a) - normalised(_dihedral(b)[transform])).mean())


def confirm_pair(
    a: np.ndarray,
    b: np.ndarray,
    transform: int,
    confirm: int | None = DEFAULT_CONFIRM,
    confirm_pixels: float | None = DEFAULT_PIXEL,
) -> tuple[int, float, bool]:
    """(256-bit pHash distance, pixel difference, confirmed?) of a near-duplicate candidate: the
    thumbnails ``a`` and ``b`` (``b`` under ``TRANSFORMS[transform]``) must be within both
    thresholds (``None``: that check is off)."""
    fine = phash256_distance(a, b, transform)
    pixels = round(pixel_difference(a, b, transform), 3)
    ok = (confirm is None or fine <= confirm) and (confirm_pixels is None or pixels <= confirm_pixels)
    return fine, pixels, ok


def _grey_plane(arr: np.ndarray, kind: str) -> np.ndarray | None:
    """The 2D grey plane to hash (colour averaged), or None for a volume.

    Volumes get exact-duplicate checks only: hashes of their slices or projections matched
    different patients' adrenal masks (AdrenalMNIST3D) as near-duplicates, so they would mislead.
    """
    if kind == "nifti":
        arr = np.squeeze(arr)
        return arr if arr.ndim == 2 else None
    return arr.mean(axis=-1) if arr.ndim == 3 else arr  # (H, W, 3) -> grey


def grey_thumbnail(
    plane: np.ndarray, size: int = THUMB, resample: Image.Resampling = Image.Resampling.LANCZOS
) -> np.ndarray:
    """Min-max scaled 8-bit ``size`` x ``size`` thumbnail of a 2D plane (default: the hash stage's,
    Lanczos as imagehash resizes; the registration stage asks for its own size and bilinear)."""
    plane = np.asarray(plane, dtype=np.float64)
    lo, hi = float(plane.min()), float(plane.max())
    scaled = (
        np.zeros(plane.shape, np.uint8) if hi <= lo else ((plane - lo) * (255.0 / (hi - lo))).astype(np.uint8)
    )
    return np.asarray(Image.fromarray(scaled).resize((size, size), resample))


_BITS_OF_MODE = {
    "1": 1,
    "L": 8,
    "P": 8,
    "LA": 8,
    "RGB": 8,
    "RGBA": 8,
    "CMYK": 8,
    "YCbCr": 8,
    "I": 32,
    "F": 32,
}


def _int_or_none(value) -> int | None:
    """A header number as an int; None when absent or malformed (e.g. multi-valued), not an error."""
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _header_facts(path: str, kind: str) -> dict:
    """Format, modality, photometric interpretation, bit depth and size from the file header.

    Raises ``headers.UnreadableImage`` (a ValueError) for a broken header.
    """
    if kind == "dicom":
        ds = dicom_header(path)
        return {
            "format": "DICOM",
            "modality": str(ds.get("Modality", "") or "unknown"),
            "manufacturer": " ".join(str(ds.get("Manufacturer", "") or "unknown").split()),
            "photometric": str(ds.get("PhotometricInterpretation", "") or "unknown"),
            "bit_depth": _int_or_none(ds.get("BitsStored")) or None,
            "channels": _int_or_none(ds.get("SamplesPerPixel")) or 1,
            "frames": _int_or_none(ds.get("NumberOfFrames")) or 1,
        }
    if kind == "nifti":
        img = nifti_header(path)
        dtype = np.dtype(img.get_data_dtype())
        return {
            "format": "NIfTI",
            "modality": "unknown",
            "photometric": "volume",
            "bit_depth": int(dtype.itemsize * 8 // max(1, len(dtype.names or ()))),
            "channels": len(dtype.names) if dtype.names else 1,  # RGB24 volumes: 3
            "frames": 1,
        }
    info = raster_header(path)
    mode = info["mode"]
    bits = 16 if mode.startswith("I;16") else _BITS_OF_MODE.get(mode)
    try:
        channels = Image.getmodebands(mode)  # as stored: RGBA = 4, LA = 2, palette = 1
    except (KeyError, ValueError):
        channels = None
    return {
        "format": info["format"] or "raster",
        "modality": "unknown",
        "photometric": mode,
        "bit_depth": bits,
        "channels": channels,
        "frames": info["frames"],
    }


def _colour_content(arr: np.ndarray) -> str:
    """``"grey"`` when the colour channels of an (H, W, C) image agree (a grey picture saved as
    RGB: 99% of pixels spread less than 4% of the image's range over R, G, B), else ``"colour"``."""
    step = max(1, max(arr.shape[:2]) // 512)
    rgb = np.asarray(arr[::step, ::step, :3], dtype=np.float32)
    if rgb.shape[-1] < 3:
        return "grey"
    spread = float(np.percentile(rgb.max(axis=-1) - rgb.min(axis=-1), 99))
    return "colour" if spread > 0.04 * max(float(rgb.max() - rgb.min()), 1e-6) else "grey"


def describe_image(path: str | os.PathLike, read_image: ReadImage, embed_size: int | None = None) -> dict:
    """Header facts, hashes and thumbnail of one image; ``{"image", "error"}`` if it cannot be read.

    Keys: ``format``, ``modality`` (and ``manufacturer``) of DICOM files, ``photometric`` (the
    colour mode: DICOM Photometric Interpretation, or the Pillow mode of PNG / JPEG files),
    ``bit_depth``, ``channels`` (as stored: RGBA = 4), ``content`` (``grey`` / ``colour``: do the
    decoded colour channels differ; ``volume``), ``size`` ("WxH", width first, or the voxel
    shape of a volume), ``file_sha256``, ``pixel_sha256`` (of the decoded array and its shape),
    ``phash`` (8 ints: the 64-bit pHash of the image under each of ``TRANSFORMS``) and ``thumb``
    (64x64 uint8). With ``embed_size`` (the embedding stage is on), 2D images also get
    ``embed_thumb`` (RGB, ``embed_size`` px, uint8: the embedder's input) and ``reg_thumb`` (grey,
    ``registration.REG_SIZE`` px, uint8: the pixel confirmation's).
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            file_sha = hashlib.sha256(f.read()).hexdigest()
        kind = file_kind(path) or "unknown"
        arr = np.ascontiguousarray(read_image(path))
        facts = _header_facts(path, kind)
    except (OSError, ValueError) as exc:  # a broken or foreign file: report it and go on
        return {"image": path, "error": f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"}
    pixel = hashlib.sha256(repr(arr.shape).encode() + arr.astype(np.float32).tobytes()).hexdigest()
    plane = _grey_plane(arr, kind)
    thumb = None if plane is None else grey_thumbnail(plane)
    hashes = None if thumb is None else [_phash64(t) for t in _dihedral(thumb)]
    shape = (arr.shape[1], arr.shape[0]) if kind != "nifti" else arr.shape  # width x height
    content = "volume" if plane is None else _colour_content(arr) if arr.ndim == 3 else "grey"
    decoded_channels = int(arr.shape[2]) if kind != "nifti" and arr.ndim == 3 else 1
    extra = {}
    if embed_size and plane is not None:
        from toolkit.data.audit.embeddings import embedding_thumb
        from toolkit.data.audit.registration import REG_SIZE

        reg_thumb = grey_thumbnail(plane, REG_SIZE, Image.Resampling.BILINEAR)
        extra = {"embed_thumb": embedding_thumb(arr, embed_size), "reg_thumb": reg_thumb}
    return {
        **extra,
        "image": path,
        "kind": kind,
        **facts,
        "size": "x".join(str(int(s)) for s in shape),
        "channels": facts.get("channels") or decoded_channels,
        "content": content,
        "file_sha256": file_sha,
        "pixel_sha256": pixel,
        "phash": hashes,
        "thumb": thumb,
    }


def describe_images(
    paths: Sequence[str],
    read_image: ReadImage,
    workers: int = 1,
    progress: Callable[[int, int], None] | None = None,
    embed_size: int | None = None,
    consume: Callable[[int, dict], None] | None = None,
) -> list[dict]:
    """``describe_image`` for every path, in order, with ``workers`` processes (1: in-process;
    more need a picklable ``read_image``, such as a module-level function). ``consume(index,
    description)`` is called in this process as each result arrives (the embedding stage takes
    and drops the large ``embed_thumb`` there, so memory stays bounded)."""
    describe = functools.partial(describe_image, read_image=read_image, embed_size=embed_size)
    results: list[dict] = []

    def keep(i: int, result: dict) -> None:
        if consume:
            consume(i, result)
        results.append(result)
        if progress and (i + 1) % 500 == 0:
            progress(i + 1, len(paths))

    if workers <= 1:
        for i, path in enumerate(paths):
            keep(i, describe(path))
        return results
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for i, result in enumerate(pool.map(describe, paths, chunksize=32)):
            keep(i, result)
    return results
