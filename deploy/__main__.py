"""``python -m deploy -i DICOM_DIR -o OUT_DIR -m MODEL`` (the MONAI Deploy App SDK's own arguments).

Also runs as a folder (``python deploy``, and in a MAP, where the folder is copied to
``/opt/holoscan/app``): the folder is then registered as the package ``deploy`` first.
"""

import importlib.util
import sys
from pathlib import Path

if "deploy" not in sys.modules:
    _here = Path(__file__).resolve().parent
    _spec = importlib.util.spec_from_file_location(
        "deploy", _here / "__init__.py", submodule_search_locations=[str(_here)]
    )
    sys.modules["deploy"] = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(sys.modules["deploy"])

from deploy.app import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
