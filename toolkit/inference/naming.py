"""Names of output files built from input data, and the check that they stay inside the output folder.

An input is data nobody checked: a StudyInstanceUID can hold ``../../x`` or ``/etc/x``, a relative path
can be longer than a file name may be (255 bytes) or differ from another one only by ``/`` vs ``__``.
Every output file named after input data goes through here, so that its name is short, unique per
input and free of separators, and its path resolves inside the output folder.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
_STEM_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
UID_MAX = 64  # DICOM PS3.5 9.1: a UID has at most 64 characters
STEM_MAX = 40  # readable part of an overlay name (the hash keeps it unique)


class UnsafeOutputPath(ValueError):
    """An output path built from input data would lie outside the output folder."""


def short_hash(text: str, length: int = 16) -> str:
    """The first ``length`` hex digits of the SHA-256 of ``text`` (surrogate-escaped bytes kept)."""
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:length]


def safe_uid(uid: str) -> bool:
    """Whether ``uid`` is digits and dots, at most 64 characters: safe as a file name and in a report."""
    return len(uid) <= UID_MAX and bool(_UID.fullmatch(uid))


def uid_file_stem(uid: str) -> str:
    """``uid`` itself when it is a valid UID (digits and dots, at most 64 characters), else ``uid-<hash>``."""
    return uid if safe_uid(uid) else f"uid-{short_hash(uid)}"


def overlay_file_name(path: str, frame: int | None, readable: bool = True) -> str:
    """File name of the Grad-CAM overlay of the input shown as ``path`` (and ``frame``).

    A hash of the path and frame makes names unique (``a/b.png`` and ``a__b.png`` differ); a short
    stem of the file name, reduced to safe characters, keeps them readable (``readable=False``: the
    hash alone, for pseudonymised runs). At most ~70 characters, whatever the input's path.
    """
    digest = short_hash(f"{path}\x00{'' if frame is None else frame}")
    frame_part = "" if frame is None else f"_frame{frame}"
    if not readable:
        return f"{digest}{frame_part}.png"
    name = path.rsplit("/", 1)[-1]
    name = name.rsplit(".", 1)[0] if "." in name[1:] else name  # IM0001.png -> IM0001_<frame>.png
    stem = _STEM_CHARS.sub("_", name)[:STEM_MAX].strip("._") or "input"
    return f"{digest}_{stem}{frame_part}.png"


def inside(root: str | os.PathLike, relative: str | os.PathLike) -> Path:
    """``root / relative``, after checking that it resolves (symbolic links followed) inside ``root``.

    Raises :class:`UnsafeOutputPath` otherwise; the message names only the relative part.
    """
    root = Path(root)
    target = root / relative
    real_root = Path(os.path.realpath(root))
    real = Path(os.path.realpath(target))
    if real == real_root or real_root not in real.parents:
        raise UnsafeOutputPath(
            f"refusing to write '{relative}': it does not resolve inside the output folder"
        )
    return target
