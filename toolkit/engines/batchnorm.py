"""BatchNorm statistics recomputed on un-augmented training images before each validation.

Why: BatchNorm layers keep running statistics of the images they saw in training. When the
augmentation changes every training image (e.g. the pneumonia bundle's augmentation resamples each
one with a random affine), those statistics describe augmented images, while validation, test and inference
images are not augmented; validation accuracy can then swing between epochs for reasons unrelated
to the weights, and the checkpoint chosen on it is a matter of luck. Recomputing the statistics on
un-augmented training images after each epoch (as "precise BN" does) removes that mismatch. It
changes no weight and draws nothing from the global random generators, so training follows the same
path; only the saved checkpoints' statistics and the validation metrics (hence the chosen
checkpoint) change.

The recomputation itself is PyTorch's ``torch.optim.swa_utils.update_bn``; this module only feeds
it the images and hooks it into the Ignite engine before ``ValidationHandler``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.data import CacheDataset, DataLoader

__all__ = ["BatchNormRecalibration", "recalibration_loader"]


def recalibration_loader(
    items: Sequence[dict], transform: Callable, images: int, batch_size: int, seed: int = 0
) -> DataLoader | None:
    """A loader of ``images`` training images (a seeded sample, each image once) through the
    evaluation ``transform``; None when ``images`` is 0 (recalibration off). The same images on
    every process, so that all ranks compute the same statistics. Like the training loader it drops
    a last partial batch (a batch of one image has no variance to measure)."""
    if images <= 0:
        return None
    if images == 1:
        raise ValueError(
            "recalibrate_bn_images: BatchNorm statistics need at least 2 images (0 turns it off)"
        )
    unique = list({str(item["image"]): item for item in items}.values())
    order = np.random.default_rng(seed).permutation(len(unique))[:images]
    dataset = CacheDataset([unique[i] for i in sorted(order)], transform, progress=False)
    # its own generator: a DataLoader draws a seed each time it is iterated, and drawing it from the
    # global RNG would change the training's later shuffles and augmentations
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=0,
        drop_last=len(dataset) > batch_size,
        generator=generator,
    )


class BatchNormRecalibration:
    """Ignite handler: after every training epoch, recompute the BatchNorm running statistics of
    ``network`` on ``loader`` (a no-op when ``loader`` is None). Attach it before the
    ``ValidationHandler`` and the epoch checkpoint so that both see the recomputed statistics."""

    def __init__(
        self, network: torch.nn.Module, loader: DataLoader | None, device: torch.device | str
    ) -> None:
        self.network = network
        self.loader = loader
        self.device = torch.device(device)

    def attach(self, engine: Engine) -> None:
        if self.loader is not None:
            engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine | None = None) -> None:
        # DDP's wrapper would synchronise buffers in its forward; every rank sees the same images, so
        # the wrapped module is recalibrated directly and the ranks stay equal.
        wrapped = isinstance(self.network, torch.nn.parallel.DistributedDataParallel)
        model = self.network.module if wrapped else self.network
        images = (batch["image"].to(self.device) for batch in self.loader)
        with torch.no_grad():
            torch.optim.swa_utils.update_bn(images, model)
