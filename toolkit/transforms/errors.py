"""The errors the readers raise: one line naming the file and the reason.

:class:`ImageReadError` is a ``ValueError``; :class:`DicomReadError` is its DICOM kind and
:class:`ResourceLimitError` the refusal of a file whose header declares more than the read limits
allow (:mod:`toolkit.transforms.limits`). Inside a MONAI ``Compose`` they arrive wrapped in
``RuntimeError("applying transform ...")``; :func:`find_read_error` digs them out.
"""

from __future__ import annotations

import os

__all__ = ["ImageReadError", "DicomReadError", "ResourceLimitError", "DicomLimitError", "find_read_error"]

PathLike = str | os.PathLike


class ImageReadError(ValueError):
    """An image file could not be read; the message names the file and the reason (one line)."""

    def __init__(self, filename: PathLike | None, reason: str):
        self.filename = os.fspath(filename) if filename is not None else None
        self.reason = " ".join(str(reason).split())  # one line
        super().__init__(f"{self.filename}: {self.reason}" if self.filename else self.reason)

    def __reduce__(self):  # picklable across DataLoader worker processes
        return self.__class__, (self.filename, self.reason)


class DicomReadError(ImageReadError):
    """A DICOM file could not be read (truncated, no pixel data, non-image object, unsupported or
    corrupt encoding, invalid value ...)."""


class ResourceLimitError(ImageReadError):
    """A file refused before decoding: its header (or its size on disk) declares more pixels, voxels,
    frames or bytes than the read limits allow. The reason names what the file declares, the limit
    and the environment variable that raises it."""


class DicomLimitError(ResourceLimitError, DicomReadError):
    """A DICOM file refused by the read limits: both a :class:`ResourceLimitError` and, like every
    failure of the DICOM reader, a :class:`DicomReadError`."""


def find_read_error(exc: BaseException | None) -> ImageReadError | None:
    """The :class:`ImageReadError` behind ``exc``, if any.

    MONAI's ``Compose`` re-raises every exception of a transform as ``RuntimeError("applying
    transform ...")`` chained to the original, so code running a chain (datasets, batch
    inference) uses this to report "file: reason" and skip the file.
    """
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, ImageReadError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None
