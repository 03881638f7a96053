#!/usr/bin/env bash
# Create the MONAI Label virtualenv for label/ (default label/.venv, or $CIT_LABEL_VENV) and install
# MONAI Label 0.8.5, its runtime requirements (label/requirements.txt) and this package into it.
# Run from anywhere: `bash label/setup_env.sh`. Needs the package registry once; offline afterwards.
# Re-installs only when label/requirements.txt, this script or pyproject.toml change.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${CIT_LABEL_VENV:-$ROOT/label/.venv}"
MONAILABEL_VERSION=0.8.5
PYDICOM_SEG_VERSION=0.4.1
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
stamp="$VENV/.installed-$(cat "$ROOT/label/requirements.txt" "$ROOT/label/setup_env.sh" "$ROOT/pyproject.toml" | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  rm -f "$VENV"/.installed-*
  pip=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
  # this package (torch, monai, pydicom 3, ...) and MONAI Label's runtime requirements, resolved together
  "${pip[@]}" -r "$ROOT/label/requirements.txt" -e "$ROOT"
  # the two packages whose declared pins cannot be met together with this package (see requirements.txt)
  "${pip[@]}" --no-deps "monailabel==$MONAILABEL_VERSION" "pydicom-seg==$PYDICOM_SEG_VERSION"
  # pydicom-seg 0.4.1 under pydicom 3: one removed private module served from pydicom.uid (see the file)
  site="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  cp "$ROOT/label/compat/cit_label_pydicom_compat.py" "$site/"
  echo "import cit_label_pydicom_compat" > "$site/cit_label_pydicom_compat.pth"
  # what the app imports at start must import (fails the setup otherwise)
  "$VENV/bin/python" -c "import pydicom_seg, monailabel.endpoints.infer, monailabel.tasks.infer.bundle, toolkit.bundle" >/dev/null
  touch "$stamp"
fi
echo "MONAI Label environment ready: $VENV (monailabel $MONAILABEL_VERSION); start with $VENV/bin/monailabel"
