"""Evaluation: metrics with confidence intervals, calibration, Grad-CAM, reports and data audits.

Import the sub-modules directly; this package imports nothing heavy:

- ``metrics``: scikit-learn metrics of single- and multi-label classifiers, and the files they go to
- ``bootstrap``: 95% bootstrap confidence intervals, resampling patients where ids exist
- ``calibration``: ECE, reliability diagrams, temperature scaling (``models/temperature.json``)
- ``operating_points``: thresholds for a target sensitivity, chosen on validation
- ``gradcam``: Grad-CAM / Grad-CAM++ heat maps (``monai.visualize``) and the one overlay of them
- ``figures``: every PNG figure (learning curves, confusion matrix, ROC / PR, reliability, samples, Grad-CAM)
- ``report``: the HTML evaluation report (`cit report`); the caller hands it the model for Grad-CAM
- ``compare``: several models on one test set: intervals, McNemar / DeLong / paired bootstrap, Holm
- the data-set audit and leakage check (`cit audit`) is a data concern: ``toolkit.data.audit``
"""
