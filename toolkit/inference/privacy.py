"""What `cit infer` writes about the people behind the inputs.

By default: no patient columns and no per-file log lines. With ``--pseudonymise-paths`` the path of
every input (folder and file names often hold patient names or record numbers, e.g.
``DOE_JOHN_MRN123456/scan0.dcm``) is replaced in every output by a keyed hash (HMAC-SHA256) of its
relative path. The key is a random secret created in the output folder (``pseudonym.key``, readable
by its owner only) and reused by later runs there, so pseudonyms are stable for that folder; whoever
holds the key and the input folder can map a pseudonym back (:func:`Pseudonymiser.table`), whoever has
only the results cannot. Error reasons never hold absolute paths, pseudonymised or not
(:func:`scrub_paths`).
"""

from __future__ import annotations

import hmac
import os
import re
import secrets
from collections.abc import Iterable
from hashlib import sha256
from pathlib import Path

from toolkit.io import atomic_write_text

KEY_NAME = "pseudonym.key"
PSEUDONYM_HEX = 20  # 80 bits: no collision in any realistic archive
# An absolute path left in a message after the known ones were replaced: a '/' not preceded by a word
# character, followed by at least one more '/' (so 'MONOCHROME1/2' and 'JPEG / JPEG-LS' stay).
_ABSOLUTE = re.compile(r"(?<![\w.~-])/[^\s'\"/]*/[^\s'\"]*")


class Pseudonymiser:
    """Keyed hash of relative paths; ``Pseudonymiser(key)(path)`` gives ``p-<20 hex digits>``."""

    def __init__(self, key: bytes):
        if len(key) < 16:
            raise ValueError("the pseudonymisation key must hold at least 16 bytes")
        self._key = key

    @classmethod
    def for_output(cls, output: str | os.PathLike) -> Pseudonymiser:
        """The key of ``output`` (``pseudonym.key``), created with 32 random bytes when absent."""
        path = Path(output) / KEY_NAME
        if not path.is_file():
            atomic_write_text(path, secrets.token_hex(32) + "\n", mode=0o600)
        text = path.read_text(encoding="ascii", errors="replace").strip()
        try:
            key = bytes.fromhex(text)
        except ValueError:
            raise ValueError(
                f"{KEY_NAME} in the output folder is not a hex key; restore it or remove it "
                "(and start afresh with --restart)"
            ) from None
        return cls(key)

    def __call__(self, path: str) -> str:
        digest = hmac.new(self._key, path.encode("utf-8", "surrogateescape"), sha256).hexdigest()
        return f"p-{digest[:PSEUDONYM_HEX]}"

    def table(self, paths: Iterable[str]) -> dict[str, str]:
        """``{pseudonym: path}`` for the given relative paths (re-identification by the key holder)."""
        return {self(p): p for p in paths}


def scrub_paths(text: str, known: Iterable[tuple[str, str]] = ()) -> str:
    """``text`` without absolute paths: each ``(path, replacement)`` of ``known`` is replaced (longest
    first), then any other absolute path becomes ``<path>``."""
    for path, replacement in sorted(
        ((p, r) for p, r in known if p and len(p) > 1), key=lambda pr: -len(pr[0])
    ):
        text = text.replace(path, replacement)
    return _ABSOLUTE.sub("<path>", text)
