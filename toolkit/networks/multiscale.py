"""Multi-scale classifier: the image at several resolutions through one shared trunk, fused by a linear head.

The rare-finding ChestX-ray14 study feeds the radiograph at full, half and quarter resolution through
one pretrained ResNet, pools the features of each scale and classifies their concatenation. timm
has no such model, so this wrapper is ours; the trunk is any timm classifier built without its
head (``num_classes=0`` gives pooled features), so its ImageNet weights, freezing and Grad-CAM
layer are those of the plain architecture.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

PREFIX = "multiscale_"


class MultiScaleNet(nn.Module):
    """``trunk`` (pooled features) applied to the image resized by each of ``scales``; features
    concatenated (in the order of ``scales``) and classified by one linear layer."""

    def __init__(
        self,
        trunk: nn.Module,
        num_classes: int,
        scales: Sequence[float] = (1.0, 0.5, 0.25),
        drop_rate: float = 0.0,
    ):
        super().__init__()
        scales = [float(s) for s in scales]
        if not scales or any(not 0 < s <= 1 for s in scales) or len(set(scales)) != len(scales):
            raise ValueError(f"scales must be distinct numbers in (0, 1], got {scales}")
        self.trunk = trunk
        self.scales = scales
        self.order = sorted(range(len(scales)), key=lambda i: scales[i])
        self.num_features = trunk.num_features * len(scales)
        self.head = nn.Sequential(nn.Dropout(drop_rate), nn.Linear(self.num_features, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # a list by position, not a dict by scale, so that TorchScript (MONAI's ckpt_export) compiles it
        features: list[torch.Tensor] = [x] * len(self.scales)
        # smallest scale first, so the trunk's last call (what Grad-CAM hooks see) is the finest one
        for i in self.order:
            scale = self.scales[i]
            image = (
                x if scale == 1.0 else F.interpolate(x, scale_factor=scale, mode="bilinear", antialias=True)
            )
            features[i] = self.trunk(image)
        return self.head(torch.cat(features, dim=1))

    def get_classifier(self) -> nn.Module:
        return self.head[-1]


def is_multiscale(name: str) -> bool:
    return name.startswith(PREFIX)


def trunk_name(name: str) -> str:
    """``multiscale_resnet50`` -> ``resnet50``."""
    return name[len(PREFIX) :] if is_multiscale(name) else name
