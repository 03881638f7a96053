"""Engine set-up helpers: device, network placement (channels_last), batch preparation, checkpoints."""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from monai.engines.utils import PrepareBatch, default_prepare_batch


def prepare_network(
    network: torch.nn.Module,
    device: torch.device | str,
    channels_last: bool = True,
    distributed: bool = False,
) -> torch.nn.Module:
    """Move a 2D network to ``device``, in channels_last memory format (faster on GPUs and on this CPU).

    With ``distributed`` (training) and a process group initialised (torchrun), the network is
    wrapped in ``DistributedDataParallel`` on this process's device. Evaluation and inference need
    no wrapper: each rank runs its own share of the items with the plain network.
    """
    network = network.to(device)
    if channels_last and _is_2d(network):
        network = network.to(memory_format=torch.channels_last)
    if distributed and torch.distributed.is_available() and torch.distributed.is_initialized():
        device = torch.device(device)
        device_ids = [device] if device.type == "cuda" else None
        network = torch.nn.parallel.DistributedDataParallel(network, device_ids=device_ids)
    return network


class PrepareImageBatch(PrepareBatch):
    """MONAI's default batch preparation, with the image (only) in channels_last for 2D networks.

    MONAI's ``to_kwargs`` would apply ``memory_format`` to the label too, which fails on 1-D labels.
    """

    def __init__(self, channels_last: bool = False):
        self.channels_last = channels_last

    def __call__(self, batchdata, device=None, non_blocking: bool = False, **kwargs):
        image, label = default_prepare_batch(batchdata, device, non_blocking, **kwargs)
        if self.channels_last and image.ndim == 4:
            image = image.contiguous(memory_format=torch.channels_last)
        return image, label


def prepare_batch_for(network: torch.nn.Module) -> PrepareImageBatch:
    """The batch preparation matching ``prepare_network``: channels_last images for 2D networks."""
    return PrepareImageBatch(channels_last=_is_2d(network))


def _is_2d(network: torch.nn.Module) -> bool:
    return not any(isinstance(m, (torch.nn.Conv3d,)) for m in network.modules())


def latest_checkpoint(ckpt_dir: str | os.PathLike, required: bool = False) -> str | None:
    """Newest full-state checkpoint (``checkpoint_epoch=N.pt`` with the largest N, else ``checkpoint_final.pt``).

    With ``required``, a missing checkpoint is an error that says where it was looked for.
    """
    ckpt_dir = Path(ckpt_dir)
    numbered = []
    for path in ckpt_dir.glob("checkpoint_epoch=*.pt"):
        match = re.search(r"epoch=(\d+)", path.name)
        if match:
            numbered.append((int(match.group(1)), path))
    if numbered:
        return str(max(numbered)[1])
    final = ckpt_dir / "checkpoint_final.pt"
    if final.is_file():
        return str(final)
    if required:
        raise FileNotFoundError(
            f"no checkpoint to resume from in {ckpt_dir} (expected checkpoint_epoch=N.pt)"
        )
    return None


def dataset_items(datalist: dict, split: str, with_label: bool = True) -> list[dict]:
    """The items of one split reduced to what the engines collate: ``image``, ``label``, ``index``.

    ``index`` points back into ``datalist[split]`` so that writers can report the full record
    (patient id, UIDs...) without every optional key having to survive batch collation.
    """
    if split not in datalist or not datalist[split]:
        raise ValueError(
            f"the datalist has no items in split '{split}' (splits: {[k for k in datalist if isinstance(datalist[k], list)]})"
        )
    items = []
    for index, item in enumerate(datalist[split]):
        record = {"image": item["image"], "index": index}
        if with_label:
            record["label"] = item["label"]
        items.append(record)
    return items


def to_probabilities(
    logits: torch.Tensor, temperature: float = 1.0, multi_label: bool = False
) -> torch.Tensor:
    """Logits (``(C,)`` or ``(B, C)``) to probabilities: temperature-scaled softmax, or sigmoid for multi-label."""
    scaled = logits.float() / float(temperature)
    return torch.sigmoid(scaled) if multi_label else torch.softmax(scaled, dim=-1)
