"""Grad-CAM / Grad-CAM++ heat maps with ``monai.visualize``, on the layer that
``toolkit.networks.gradcam_target_layer`` picks for the architecture, and the overlay that shows them
(the one used by the evaluation report and by `cit infer --gradcam`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from matplotlib import colormaps
from monai.visualize import GradCAM, GradCAMpp
from torch import nn

from toolkit.networks import gradcam_target_layer

__all__ = ["METHODS", "ExplainableModel", "Explainer", "display_plane", "map_plane", "overlay"]

METHODS = ("gradcam", "gradcampp")


@dataclass
class ExplainableModel:
    """What heat maps of a trained model need, handed over by whoever loaded the model (e.g. `cit report`
    from ``toolkit.bundle.load_bundle``): the network, the preprocessing that turns
    ``{"image": path}`` into ``{"image": tensor (C, *spatial)}``, and the class names of its outputs."""

    network: nn.Module
    preprocessing: Callable[[dict], dict]
    class_names: list[str]


class Explainer:
    """Heat maps for a classification network (2D, or 3D shown as its middle slice).

    ``method`` is ``"gradcam"`` (MONAI ``GradCAM``) or ``"gradcampp"`` (``GradCAMpp``);
    ``target_layer`` defaults to ``gradcam_target_layer(network)``. MONAI registers hooks on the
    layer, so build one Explainer per network and reuse it.
    """

    def __init__(self, network: nn.Module, method: str = "gradcam", target_layer: str | None = None):
        if method not in METHODS:
            raise ValueError(f"unknown CAM method {method!r}; choose one of {METHODS}")
        self.network = network
        self.target_layer = target_layer or gradcam_target_layer(network)
        if self.target_layer.startswith("blocks.") and self.target_layer.endswith(".norm1"):
            # transformer tokens need a reshape to a grid, which monai.visualize does not do
            raise ValueError(
                f"Grad-CAM overlays support convolutional networks only (target {self.target_layer})"
            )
        if self.target_layer not in dict(network.named_modules()):
            raise ValueError(f"target layer {self.target_layer!r} not found in {type(network).__name__}")
        cls = GradCAM if method == "gradcam" else GradCAMpp
        self.cam = cls(nn_module=network, target_layers=self.target_layer)
        self.method = method

    def __call__(self, images: torch.Tensor, class_idx: int | None = None) -> np.ndarray:
        """Heat maps in [0, 1] of shape (B, *spatial) for a batch (B, C, *spatial), for
        ``class_idx`` (default: each image's predicted class)."""
        device = next(self.network.parameters()).device
        x = images.detach().float().to(device).requires_grad_(True)  # gradients even if layers are frozen
        with torch.enable_grad():
            maps = self.cam(x, class_idx=class_idx)
        return maps.detach().cpu().numpy()[:, 0]

    def explain(self, image: torch.Tensor, class_idx: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """One network input (C, *spatial) -> (the image as ``display_plane`` shows it, the matching
        heat-map plane), ready for :func:`overlay`."""
        image = torch.as_tensor(image).as_subclass(torch.Tensor).detach().float().cpu()
        heatmap = self(image[None], class_idx=class_idx)[0]
        return display_plane(image.numpy()), map_plane(heatmap)


def display_plane(image: np.ndarray) -> np.ndarray:
    """A network input (C, *spatial) as a displayable (H, W) or (H, W, 3) array in [0, 1];
    volumes show their middle slice along the last axis. Each channel is stretched on its own
    (0.5-99.5 percentiles), which undoes per-channel intensity normalisation such as ImageNet's:
    a grey image copied to three channels shows grey again."""
    arr = np.asarray(image, dtype=np.float64)
    if arr.ndim == 4:  # (C, H, W, D)
        arr = arr[..., arr.shape[-1] // 2]
    if arr.shape[0] != 3:
        return _stretch(arr[0])
    return np.stack([_stretch(channel) for channel in arr], axis=-1)


def _stretch(plane: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(plane, [0.5, 99.5])
    return np.clip((plane - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(plane)


def map_plane(heatmap: np.ndarray) -> np.ndarray:
    """The (H, W) plane of a heat map matching ``display_plane``."""
    heatmap = np.asarray(heatmap)
    return heatmap[..., heatmap.shape[-1] // 2] if heatmap.ndim == 3 else heatmap


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.45, cmap: str = "jet") -> np.ndarray:
    """RGB (H, W, 3) in [0, 1]: the grey or RGB ``image`` with the ``heatmap`` blended on top."""
    base = np.repeat(image[..., None], 3, axis=-1) if image.ndim == 2 else image
    colour = colormaps[cmap](np.clip(heatmap, 0, 1))[..., :3]
    return np.clip((1 - alpha) * base + alpha * colour, 0, 1)
