"""Image embeddings for the audit's near-duplicate search: pooled ImageNet features of a timm network.

The data-set audit (``toolkit.data.audit``) lives in a lower layer and cannot import torch networks;
it takes an *embedder*: a callable mapping a batch of RGB thumbnails ``(B, size, size, 3)`` uint8 to
``(B, D)`` float32 features, with a ``name`` (the cache key) and a ``size`` (the thumbnail side it
wants). ``ImageEmbedder`` is that callable over ``create_network(..., pretrained="imagenet")``:
the pooled features before the classifier (timm ``forward_head(pre_logits=True)``), normalised
with the architecture's own mean / std (``input_normalisation``), averaged over the image and its
mirror images (left-right, top-bottom, both: ``FLIPS``), L2-normalised.

Why the flip average: augmented copies (LC25000) are flipped left-right and top-bottom; ImageNet features
are nearly invariant to a left-right mirror (the networks were trained with it) but not to a
top-bottom one. The mean over the four flips is exactly invariant to both, so a flipped copy's
embedding differs from the original's only by what the rotation, zoom and crop change. It costs
four forward passes per image, still far below the keypoints of the confirmation.
"""

from __future__ import annotations

import numpy as np
import torch

from toolkit.networks.factory import create_network, input_normalisation

DEFAULT_EMBEDDER = "tf_efficientnet_lite0"
DEFAULT_EMBED_SIZE = (
    224  # the resolution the ImageNet weights were trained at; 128 px lost 10 % recall on LC25000
)
FLIPS = ((), (3,), (2,), (2, 3))  # tensor dims flipped: none, left-right, top-bottom, both (= 180 degrees)


class ImageEmbedder:
    """Pooled, flip-averaged, L2-normalised ImageNet features of ``arch`` (weights found offline, see
    ``create_network``)."""

    def __init__(
        self, arch: str = DEFAULT_EMBEDDER, size: int = DEFAULT_EMBED_SIZE, device: str | None = None
    ):
        self.arch = arch
        self.size = int(size)
        self.name = f"{arch}-imagenet-{self.size}px-prelogits-flipmean"
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self._model = None
        norm = input_normalisation(arch, 3)
        self._mean = torch.tensor(norm["mean"]).view(1, 3, 1, 1)
        self._std = torch.tensor(norm["std"]).view(1, 3, 1, 1)

    def _network(self):
        if self._model is None:  # loaded on first use: building the embedder stays cheap
            model = create_network(self.arch, num_classes=1, pretrained="imagenet")
            self._model = model.eval().to(self.device)
        return self._model

    @torch.inference_mode()
    def __call__(self, batch: np.ndarray) -> np.ndarray:
        model = self._network()
        x = torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2).float().div_(255.0)
        x = ((x - self._mean) / self._std).to(self.device)
        features = sum(
            model.forward_head(model.forward_features(x.flip(dims) if dims else x), pre_logits=True).float()
            for dims in FLIPS
        )
        features = torch.nn.functional.normalize(features, dim=1)
        return features.cpu().numpy().astype(np.float32)
