"""Evaluation: metrics with confidence intervals, calibration, Grad-CAM, reports and data audits.

Import the sub-modules directly; this package imports nothing heavy:

- ``metrics``: scikit-learn metrics of single- and multi-label classifiers, and the files they go to
- ``bootstrap``: 95% bootstrap confidence intervals, resampling patients where ids exist
- ``calibration``: ECE, reliability diagrams, temperature scaling (``models/temperature.json``)
- ``operating_points``: thresholds for a target sensitivity, chosen on validation
- ``gradcam``: Grad-CAM / Grad-CAM++ heat maps (``monai.visualize``) and overlays
- ``training_plots``: learning curves and confusion matrix PNGs from a run's output files
- ``report``: the HTML evaluation report (`cit report`)
- ``audit``: the data-set audit and leakage check (`cit audit`)
"""
