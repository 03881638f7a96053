"""Telling a truncated or corrupt JPEG from a whole one, with the decoder Pillow already has.

Why this is needed (issue 26, item 10): when libjpeg meets the end of the entropy-coded data before the
last block ("premature end of data segment"), or finishes the last block with bytes left over
("N extraneous bytes before marker 0xd9", typical of corrupted data that threw the Huffman decoding out
of step), it emits a *warning* and goes on, filling what is missing with grey. Pillow discards libjpeg's
warnings (``output_message`` does nothing in its ``JpegDecode.c``), so such a file decodes "successfully";
``ImageFile.LOAD_TRUNCATED_IMAGES`` (False) only matters for a file that ends without its end-of-image
marker, which already fails. No installed decoder reports these warnings, so :func:`jpeg_problem` asks
the decoder two questions instead, on the image decoded at 1/8 scale (DC coefficients only, cheap):

* *premature end*: with bytes added before the end-of-image marker, does the image change? A whole
  JPEG never reads past its last block, so it cannot; a truncated one decodes the added bytes.
* *left-over bytes*: with the last bytes of the entropy-coded data removed, does the image stay the
  same? In a whole JPEG those bytes hold the last block, so it changes (unless that block is flat
  mid-grey, when no answer is given); bytes the decoder never used change nothing.

Only single-scan sequential Huffman JPEGs (baseline / extended: nearly every JPEG written by scanners
and by PACS exports) are checked; progressive, lossless and arithmetic-coded files pass unchecked.
"""

from __future__ import annotations

import io
import struct

import numpy as np

__all__ = ["jpeg_problem"]

_PAD = bytes(range(0x11, 0x11 + 96))  # bytes added before EOI: no 0xFF, varied bits
_TRIM = 4  # bytes removed from the end of the entropy-coded data by the second question
_SEQUENTIAL = (0xC0, 0xC1)  # SOF0 baseline, SOF1 extended sequential (Huffman)


def _scan(data: bytes) -> tuple[int, int, bool, bool] | None:
    """(start, end, restart markers used, whole MCUs) of the entropy-coded data of a single-scan sequential
    Huffman JPEG ending with EOI; whole MCUs: the image's sides are multiples of the MCU's, so the last
    MCU holds no block outside the image."""
    if not data.startswith(b"\xff\xd8"):
        return None
    pos, sof, start, restarts, whole = 2, None, None, False, False
    n = len(data)
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF or 0xD0 <= marker <= 0xD7 or marker == 0x01:  # fill byte, RSTn, TEM: no length
            pos += 1 if marker == 0xFF else 2
            continue
        if marker == 0xD9:
            return None  # EOI before any scan
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            sof = marker
            rows, columns, components = struct.unpack(">HHB", data[pos + 5 : pos + 10])
            factors = data[pos + 11 : pos + 10 + 3 * components : 3]
            h = max((f >> 4 for f in factors), default=1) if components > 1 else 1
            v = max((f & 15 for f in factors), default=1) if components > 1 else 1
            whole = rows % (8 * v) == 0 and columns % (8 * h) == 0
        if marker == 0xDD and length >= 4:  # DRI: restart interval
            restarts = data[pos + 4 : pos + 6] != b"\x00\x00"
        if marker == 0xDA:
            start = pos + 2 + length
            break
        pos += 2 + length
    if start is None or sof not in _SEQUENTIAL:
        return None
    # the scan ends at the first marker that is neither a stuffed 0xFF00 nor a restart marker
    end = start
    while True:
        end = data.find(b"\xff", end)
        if end < 0 or end + 1 >= n:
            return None  # no marker after the scan: a file that ends without EOI fails in Pillow anyway
        nxt = data[end + 1]
        if nxt == 0x00 or 0xD0 <= nxt <= 0xD7 or nxt == 0xFF:
            end += 1 if nxt == 0xFF else 2
            continue
        break
    if data[end + 1] != 0xD9:
        return None  # another scan or segment follows: not a single-scan file
    return start, end, restarts, whole


def _decode(data: bytes, small: bool = True) -> np.ndarray | None:
    """The image decoded (at 1/8 scale when ``small``), or None if it cannot be decoded."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            if small:
                im.draft(im.mode, (1, 1))
            im.load()
            return np.asarray(im)
    except Exception:  # noqa: BLE001 - any failure of a probe decode is an answer, not an error
        return None


def _same(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    return a is not None and b is not None and np.array_equal(a, b)


def jpeg_problem(data: bytes) -> str | None:
    """Why the JPEG ``data`` is truncated or corrupt (one line), or None when it looks whole (or is
    of a kind not checked: see the module docstring)."""
    scan = _scan(data)
    if scan is None:
        return None
    start, end, restarts, whole = scan
    reference = _decode(data)
    if reference is None:
        return None  # the real decode reports it
    padded = data[:end] + _PAD + data[end:]
    # with restart intervals, the added bytes may only reach the AC coefficients of the cut interval
    if not _same(_decode(padded), reference) or (
        restarts and not _same(_decode(padded, small=False), _decode(data, small=False))
    ):
        return (
            "truncated or corrupt JPEG: the entropy-coded data ends before the last block "
            "(the decoder would fill the rest with grey)"
        )
    if end - start < 64 or not whole:
        return None  # a few blocks, or blocks outside the image at the end, which removing bytes may not show
    # 4 bytes: more than the zero bits a whole file's last codes can decode alike (then the decoder blanks
    # the last block: see below), fewer than the left-over bytes of damaged data usually are
    trimmed = data[: end - _TRIM] + data[end:]
    if not _same(_decode(trimmed), reference):
        return None
    # the same at 1/8 scale (DC only): compare the full images, in which every coefficient counts
    reference, trimmed = _decode(data, small=False), _decode(trimmed, small=False)
    if not _same(trimmed, reference):
        return None
    if np.all(reference.reshape(reference.shape[0], reference.shape[1], -1)[-1, -1] == 128):
        return None  # the last block may be flat mid-grey, as the decoder fills missing blocks
    return "corrupt JPEG: the entropy-coded data holds bytes after its last block (damaged data decoded out of step)"
