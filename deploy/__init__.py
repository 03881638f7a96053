"""MONAI Deploy application: a DICOM study folder in, a DICOM SR + JSON of class probabilities out.

Run in-process with ``python -m deploy -i DICOM_DIR -o OUT_DIR -m MODEL`` from its own virtualenv
(``bash deploy/setup_env.sh``); see ``deploy/app.py`` for the graph and the README's "MONAI Deploy"
section for packaging it as a MAP. Nothing in ``toolkit`` imports this package.
"""
