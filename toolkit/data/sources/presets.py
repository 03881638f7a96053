"""Name presets: labels and patient ids that a data set encodes in its file names.

``label_from_name`` / ``patient_from_name`` of the folder source take a callable ``path -> str``
or one of these names, so bundle configs and the command line can pick one by name.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path

NameParser = Callable[[str], str | None]


def kermany_3class(path: str) -> str | None:
    """Kermany CXR: NORMAL/* -> normal; personN_bacteria_M -> bacteria; personN_virus_M -> virus."""
    p = Path(path)
    name = p.name.lower()
    if "bacteria" in name:
        return "bacteria"
    if "virus" in name:
        return "virus"
    if p.parent.name.upper() == "NORMAL" or name.startswith(("im-", "normal")):
        return "normal"
    return None


_KERMANY_PATIENT = re.compile(r"^(person\d+)_|^((?:NORMAL\d*-)?IM-\d+)", re.IGNORECASE)


def kermany_patient(path: str) -> str | None:
    """Kermany CXR patient ids as the file names encode them: ``personN`` or ``[NORMAL2-]IM-XXXX``."""
    match = _KERMANY_PATIENT.match(Path(path).name)
    return (match.group(1) or match.group(2)) if match else None


# preset name -> (parser, class names in label order)
LABEL_PRESETS: dict[str, tuple[NameParser, list[str]]] = {
    "kermany_3class": (kermany_3class, ["normal", "bacteria", "virus"]),
}
PATIENT_PRESETS: dict[str, NameParser] = {
    "kermany": kermany_patient,
    # The Kaggle brain-tumour MRI names (Tr-gl_0011.jpg) do not encode a patient, so no preset.
}


def resolve_preset(value, presets: Mapping, what: str):
    """``value`` itself if callable, None for None / False (no preset: MONAI's command line drops a
    ``None`` override, so ``--split#label_from_name False`` is how a user turns a preset off), else the
    preset of that name (``ValueError`` if unknown)."""
    if value is None or value is False:
        return None
    if callable(value):
        return value
    if value in presets:
        return presets[value]
    raise ValueError(
        f"unknown {what} preset {value!r}; known: {', '.join(sorted(presets))} (or pass a callable)"
    )
