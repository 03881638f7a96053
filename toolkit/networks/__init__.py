"""Networks: `create_network` over timm (2-D) and MONAI (3-D), pretrained weights, freezing, Grad-CAM layers."""

from .factory import SUPPORTED_2D, SUPPORTED_3D, create_network, gradcam_target_layer, input_normalisation
from .freezing import apply_freeze, count_parameters
from .weights import (
    LoadReport,
    PretrainedWeightsUnavailable,
    WeightsIntegrityError,
    download_weights,
    load_pretrained,
)

__all__ = [
    "SUPPORTED_2D",
    "SUPPORTED_3D",
    "LoadReport",
    "PretrainedWeightsUnavailable",
    "WeightsIntegrityError",
    "apply_freeze",
    "count_parameters",
    "create_network",
    "download_weights",
    "gradcam_target_layer",
    "input_normalisation",
    "load_pretrained",
]
