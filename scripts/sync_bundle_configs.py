"""Copy what the bundles share from configs/base into each bundle's own config files.

A bundle's configs must run from any working directory, be loaded by MONAI's own tools
(`monai.bundle run / load`, `--tracking mlflow`, MONAI Label, MONAI Deploy) and read as one file, as
model-zoo bundles do. MONAI resolves a `%file#id` macro against the working directory, so a bundle
cannot pull the shared parts from configs/base at run time. They are written into it instead: every
value that came from configs/base is listed in the file's `_base_` (id -> where it comes from), and
this script rewrites those values from their source. configs/base stays the one place to edit what
the bundles share; a bundle's own choices (its recipe) are the ids not listed in `_base_`.

    python scripts/sync_bundle_configs.py          # rewrite the bundles' configs
    python scripts/sync_bundle_configs.py --check  # exit 1 when a config differs from its sources

A value written as a macro (`"%configs/base/components.json#optimizer#adam"`) is replaced by the
content it names and listed in `_base_`, so choosing another part of configs/base is still a one-line
edit: write the macro, run the script. tests/bundles/test_bundle_configs_synced.py fails while a
bundle is out of date.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BASE_PREFIX = "%configs/base/"
BASE_KEY = "_base_"
BASE_NOTE = (
    "Ids whose values are copied from configs/base by scripts/sync_bundle_configs.py: edit them there and "
    "run the script (a test fails while a bundle is out of date). Every other id is this bundle's own."
)
WIDTH = 110


def base_value(source: str) -> object:
    """The content of ``configs/base/<file>#<id>[#<id>...]``."""
    file, *ids = source.split("#")
    value = json.loads((REPO / file).read_text(encoding="utf-8"))
    for key in ids:
        value = value[int(key)] if isinstance(value, list) else value[key]
    return value


def synced(config: dict) -> dict:
    """``config`` with every configs/base value written in and listed in ``_base_``."""
    sources = {k: v for k, v in (config.get(BASE_KEY) or {}).items() if k != "_desc_"}
    out = {}
    for key, value in config.items():
        if key == BASE_KEY:
            continue
        if isinstance(value, str) and value.startswith(BASE_PREFIX):
            sources[key] = value[1:]
        out[key] = base_value(sources[key]) if key in sources else value
    if sources:
        out[BASE_KEY] = {"_desc_": BASE_NOTE, **sources}
    return out


def dumps(value: object, indent: int = 0, room: int = WIDTH) -> str:
    """JSON with each container on one line when it fits in ``room`` characters, else one item a line."""
    flat = json.dumps(value, ensure_ascii=False)
    if not isinstance(value, (dict, list)) or not value or len(flat) <= room:
        return flat
    pad = " " * (indent + 2)
    if isinstance(value, dict):
        items = [
            f"{pad}{json.dumps(k, ensure_ascii=False)}: "
            + dumps(v, indent + 2, WIDTH - indent - 4 - len(json.dumps(k, ensure_ascii=False)))
            for k, v in value.items()
        ]
        return "{\n" + ",\n".join(items) + "\n" + " " * indent + "}"
    items = [pad + dumps(v, indent + 2, WIDTH - indent - 2) for v in value]
    return "[\n" + ",\n".join(items) + "\n" + " " * indent + "]"


def bundle_configs() -> list[Path]:
    return sorted(p for p in (REPO / "bundles").glob("*/configs/*.json") if p.name != "metadata.json")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 when a config is stale")
    args = parser.parse_args(argv)
    stale = []
    for path in bundle_configs():
        text = path.read_text(encoding="utf-8")
        new = dumps(synced(json.loads(text))) + "\n"
        if new != text:
            stale.append(path.relative_to(REPO))
            if not args.check:
                path.write_text(new, encoding="utf-8")
    if args.check and stale:
        print(
            "out of date with configs/base (run python scripts/sync_bundle_configs.py): "
            + ", ".join(map(str, stale)),
            file=sys.stderr,
        )
        return 1
    for name in stale:
        print(f"updated {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
