"""`create_network`: 2-D classifiers from timm, 3-D classifiers from MONAI, with pretrained weights and freezing."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import timm
from monai.networks import nets as monai_nets
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

from .freezing import apply_freeze
from .multiscale import MultiScaleNet, is_multiscale, trunk_name
from .packaged_weights import PACKAGED_WEIGHTS
from .weights import (
    LoadReport,
    PretrainedWeightsUnavailable,
    download_weights,
    downloads_allowed,
    fetch_hub_weights,
    find_local_weights,
    how_to_supply_weights,
    load_pretrained,
)

logger = logging.getLogger(__name__)

# Tested 2-D architectures (any other timm architecture name is accepted too).
SUPPORTED_2D: tuple[str, ...] = (
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet18d",
    "resnet26d",
    "resnet34d",
    "resnet50d",
    "resnet101d",
    "resnet152d",
    "resnet200d",
    "vgg16",
    "vgg16_bn",
    "inception_v3",
    "densenet121",
    "efficientnet_b0",
    "tf_efficientnet_lite0",  # ImageNet weights offline (toolkit.networks.packaged_weights), also lite1 / lite2
    "deit_tiny_distilled_patch16_224",
    "deit_small_distilled_patch16_224",
    "deit_base_distilled_patch16_224",
    "multiscale_resnet18",  # MultiScaleNet over a timm trunk; any multiscale_<timm name> works
    "multiscale_resnet50",
)


def _monai_resnet(depth: str):
    def build(num_classes, in_channels, drop_rate, **kwargs):
        if drop_rate:
            raise ValueError(f"MONAI's 3-D resnet{depth} has no dropout; use drop_rate=0.0")
        factory = getattr(monai_nets, f"resnet{depth}")
        return factory(spatial_dims=3, n_input_channels=in_channels, num_classes=num_classes, **kwargs)

    return build


def _monai_densenet121(num_classes, in_channels, drop_rate, **kwargs):
    return monai_nets.DenseNet121(
        spatial_dims=3, in_channels=in_channels, out_channels=num_classes, dropout_prob=drop_rate, **kwargs
    )


def _monai_efficientnet(variant: str):
    def build(num_classes, in_channels, drop_rate, **kwargs):
        model = monai_nets.EfficientNetBN(
            f"efficientnet-{variant}",
            pretrained=False,
            spatial_dims=3,
            in_channels=in_channels,
            num_classes=num_classes,
            **kwargs,
        )
        model._dropout.p = drop_rate  # same meaning as timm's drop_rate (dropout before the classifier)
        return model

    return build


_BUILDERS_3D = {
    "densenet121": _monai_densenet121,
    **{f"resnet{d}": _monai_resnet(d) for d in ("18", "34", "50")},
    **{f"efficientnet_b{i}": _monai_efficientnet(f"b{i}") for i in range(8)},
}
SUPPORTED_3D: tuple[str, ...] = tuple(_BUILDERS_3D)


def _is_url(value: str) -> bool:
    return value.lower().startswith(("http://", "https://"))


def _build(
    name: str, num_classes: int, in_channels: int, spatial_dims: int, drop_rate: float, model_kwargs: dict
) -> nn.Module:
    if spatial_dims == 3:
        if name not in _BUILDERS_3D:
            raise ValueError(
                f"Unknown 3-D network {name!r}; supported (spatial_dims=3): {', '.join(SUPPORTED_3D)}"
            )
        return _BUILDERS_3D[name](num_classes, in_channels, drop_rate, **model_kwargs)
    if is_multiscale(name):
        scales = model_kwargs.pop("scales", (1.0, 0.5, 0.25))
        trunk = _build(trunk_name(name), 0, in_channels, spatial_dims, 0.0, model_kwargs)
        return MultiScaleNet(trunk, num_classes, scales, drop_rate)
    if "scales" in model_kwargs:  # the multi-scale bundle's model_kwargs given a plain network name
        raise ValueError(
            f"{name!r} is not a multi-scale network, but scales {list(model_kwargs['scales'])} were given "
            f"(model_kwargs): name the multi-scale network {'multiscale_' + name!r} instead, "
            "or drop the scales"
        )
    if name not in SUPPORTED_2D and not timm.is_model(name.split(".")[0]):
        raise ValueError(
            f"Unknown 2-D network {name!r}; supported: {', '.join(SUPPORTED_2D)} "
            f"(or any timm architecture, see timm.list_models())"
        )
    return timm.create_model(
        name,
        pretrained=False,
        num_classes=num_classes,
        in_chans=in_channels,
        drop_rate=drop_rate,
        **model_kwargs,
    )


def _imagenet_weights(model: nn.Module, name: str, spatial_dims: int) -> Path | str:
    """Path of the default ImageNet weights for `name`, or the "not found" message listing the places looked."""
    key = name if spatial_dims == 2 else f"{name}_3d"
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    found, looked = find_local_weights(key, cfg)
    if found is not None:
        return found
    if downloads_allowed() and cfg.get("hf_hub_id"):
        looked.append(f"Hugging Face hub download of {cfg['hf_hub_id']} (CIT_ALLOW_DOWNLOAD=1)")
        try:
            return fetch_hub_weights(cfg)
        except Exception as err:  # noqa: BLE001 - any failure becomes part of the "not found" message
            looked[-1] += f": failed ({err})"
    elif cfg.get("hf_hub_id"):
        looked.append("no download attempted (offline by default; CIT_ALLOW_DOWNLOAD=1 enables it)")
    else:
        looked.append("no public ImageNet weights exist for this architecture")
    alternative = (
        f"Offline ImageNet weights come with the toolkit for {', '.join(PACKAGED_WEIGHTS)} (2D): e.g. "
        f"--model_name tf_efficientnet_lite0 --pretrained imagenet.\n"
        if key not in PACKAGED_WEIGHTS
        else ""
    )
    return (
        f"No pretrained ImageNet weights found for '{key}'. Looked in:\n  - "
        + "\n  - ".join(looked)
        + "\n"
        + alternative
        + how_to_supply_weights(key)
    )


def _load_requested_weights(
    model: nn.Module,
    name: str,
    pretrained,
    spatial_dims: int,
    fallback: str,
    weights_sha256: str | None,
    cache_dir,
) -> None:
    if pretrained is None or pretrained is False:
        return
    if pretrained is True or (isinstance(pretrained, str) and pretrained.lower() == "imagenet"):
        found = _imagenet_weights(model, name, spatial_dims)
        if isinstance(found, Path):
            load_pretrained(model, found)
            return
        if fallback == "error":
            raise PretrainedWeightsUnavailable(found)
        logger.warning("!" * 78 + "\nTRAINING FROM RANDOM INITIALISATION: %s\n" + "!" * 78, found)
        model.pretrained_report = LoadReport(source="none", warning=found)
        return
    if not isinstance(pretrained, (str, os.PathLike)):
        raise TypeError(
            f"pretrained must be None, True, 'imagenet', a file path or an http(s) URL, got {pretrained!r}"
        )
    if isinstance(pretrained, str) and _is_url(pretrained):
        load_pretrained(model, download_weights(pretrained, sha256=weights_sha256, cache_dir=cache_dir))
        return
    path = Path(pretrained).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights file not found: {path}")
    load_pretrained(model, path)


def create_network(
    name: str,
    num_classes: int,
    in_channels: int = 3,
    pretrained: bool | str | os.PathLike | None = None,
    freeze: int | Sequence[str] | None = None,
    spatial_dims: int = 2,
    drop_rate: float = 0.0,
    pretrained_fallback: str = "error",
    weights_sha256: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    **model_kwargs,
) -> nn.Module:
    """Build a classifier: timm for 2-D (`SUPPORTED_2D`, or any timm name), MONAI for 3-D (`SUPPORTED_3D`).

    Args:
        name: architecture, e.g. "resnet18", "deit_small_distilled_patch16_224"; with spatial_dims=3 one of
            "densenet121", "resnet18/34/50", "efficientnet_b0".."efficientnet_b7" (MONAI).
        num_classes: number of outputs of the new classification head.
        in_channels: image channels (1 for grey-scale); pretrained RGB stems are adapted by summing.
        pretrained: None/False = random init; True or "imagenet" = the architecture's default ImageNet
            weights found offline (``$CIT_WEIGHTS_DIR/<name>.pth|.pt|.bin|.safetensors``, then the Hugging Face
            and torch.hub caches; 3-D networks look for ``<name>_3d.*``; the hub is contacted only with
            ``CIT_ALLOW_DOWNLOAD=1``); a file path; or an http(s) URL, downloaded once into `cache_dir`
            (default ``$CIT_WEIGHTS_DIR/downloads``) after a SHA-256 check (`weights_sha256`, a ``#sha256=`` fragment, or a torch.hub-style name).
        freeze: None, an int N = the first N stages (ResNet: 1 = stem, 2 = stem + layer1, ...), or a list
            of parameter-name prefixes. See `toolkit.networks.freezing.apply_freeze`.
        spatial_dims: 2 (timm) or 3 (MONAI).
        drop_rate: dropout before the classifier.
        pretrained_fallback: "error" raises `PretrainedWeightsUnavailable` when "imagenet" weights are not
            found; "warn" logs a loud warning and keeps the random initialisation. Explicit files and URLs
            always raise on failure.
        weights_sha256, cache_dir: see `download_weights`.
        model_kwargs: passed to `timm.create_model` (e.g. img_size=64 for DeiT) or the MONAI constructor.

    The model carries ``model.pretrained_report`` (a `LoadReport`, or None for a plain random init).
    """
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if not isinstance(in_channels, int) or isinstance(in_channels, bool) or in_channels < 1:
        raise ValueError(f"in_channels must be a positive int, got {in_channels!r}")
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
    if pretrained_fallback not in ("error", "warn"):
        raise ValueError(f"pretrained_fallback must be 'error' or 'warn', got {pretrained_fallback!r}")
    model = _build(name, num_classes, in_channels, spatial_dims, drop_rate, dict(model_kwargs))
    target = (
        model.trunk if isinstance(model, MultiScaleNet) else model
    )  # pretrained weights + freezing: the trunk's
    target.pretrained_report = None
    _load_requested_weights(
        target, trunk_name(name), pretrained, spatial_dims, pretrained_fallback, weights_sha256, cache_dir
    )
    model.pretrained_report = target.pretrained_report
    if freeze and not (model.pretrained_report and model.pretrained_report.loaded):
        logger.warning(
            "freezing %s of '%s', which has no pretrained weights: the frozen layers keep their random "
            "initial values and will not learn",
            freeze,
            name,
        )
    apply_freeze(target, freeze)
    return model


def input_normalisation(name: str, channels: int = 3) -> dict[str, list[float]]:
    """``{"mean": [...], "std": [...]}`` that `name`'s ImageNet weights expect, for ``channels`` channels.

    From timm's pretrained config of the architecture (the trunk's for ``multiscale_*``): ImageNet's
    mean / std for most, 0.5 / 0.5 for the TensorFlow-trained ones (``tf_efficientnet_lite*``,
    ``inception_v3``). Other names (MONAI 3D networks) get ImageNet's. One channel: the average.
    """
    cfg = timm.models.get_pretrained_cfg(trunk_name(name).split(".")[0])
    mean = tuple(cfg.mean) if cfg and cfg.mean else IMAGENET_DEFAULT_MEAN
    std = tuple(cfg.std) if cfg and cfg.std else IMAGENET_DEFAULT_STD
    if channels != len(mean):
        mean, std = (sum(mean) / len(mean),) * channels, (sum(std) / len(std),) * channels
    return {"mean": [float(v) for v in mean], "std": [float(v) for v in std]}


def gradcam_target_layer(model: nn.Module) -> str:
    """Name of the module whose output Grad-CAM should use: the last convolutional feature map.

    Resolution order: ViT / DeiT -> ``blocks.<last>.norm1`` (its output is a token sequence, so Grad-CAM
    needs a reshape transform dropping the class / distillation tokens and folding patches to a grid);
    timm EfficientNet-style heads -> ``bn2`` (norm + activation after ``conv_head``); MONAI ResNet ->
    ``layer4``, DenseNet -> ``class_layers.relu``, EfficientNet -> ``_bn1``; otherwise timm's ``feature_info[-1]["module"]``
    (ResNet ``layer4``, DenseNet ``features.norm5``, VGG ``features.<last>``, Inception ``Mixed_7c``);
    otherwise the last Conv2d / Conv3d.
    """
    if isinstance(model, MultiScaleNet):
        return "trunk." + gradcam_target_layer(model.trunk)
    modules = dict(model.named_modules())
    if "patch_embed" in modules and isinstance(getattr(model, "blocks", None), nn.Sequential):
        return f"blocks.{len(model.blocks) - 1}.norm1"
    if "bn2" in modules and isinstance(modules.get("conv_head"), nn.Conv2d):
        return "bn2"
    for monai_class, name in (
        (monai_nets.ResNet, "layer4"),
        (monai_nets.DenseNet, "class_layers.relu"),
        (monai_nets.EfficientNet, "_bn1"),
    ):
        if isinstance(model, monai_class) and name in modules:
            return name
    feature_info = getattr(model, "feature_info", None)
    if isinstance(feature_info, list) and feature_info and feature_info[-1].get("module") in modules:
        return feature_info[-1]["module"]
    convs = [n for n, m in modules.items() if isinstance(m, (nn.Conv2d, nn.Conv3d))]
    if not convs:
        raise ValueError(f"No convolutional layer found in {type(model).__name__} for Grad-CAM")
    return convs[-1]


__all__ = ["SUPPORTED_2D", "SUPPORTED_3D", "create_network", "gradcam_target_layer", "input_normalisation"]
