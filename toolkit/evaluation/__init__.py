"""Evaluation: metrics with confidence intervals, calibration, Grad-CAM, reports and data audits.

Import the sub-modules directly (``toolkit.evaluation.metrics``, ``.calibration``, ``.bootstrap``,
``.operating_points``, ``.gradcam``, ``.report``, ``.audit``); this package imports nothing heavy.
"""
