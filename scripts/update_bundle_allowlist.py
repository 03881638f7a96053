"""Regenerate toolkit/resources/trusted_bundle_entries.json after changing a bundle config or configs/base.

The allow-list holds the expressions and ``_target_`` components of this repository's bundles (shared
base expanded), which is all a foreign bundle folder may hold unless trusted (toolkit.bundle.trust).
tests/bundles/test_trust.py fails while the file is out of date.
"""

from pathlib import Path

from toolkit.bundle.trust import write_allowed

if __name__ == "__main__":
    print(write_allowed(Path(__file__).resolve().parents[1]))
