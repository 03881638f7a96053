"""A trained bundle as the frozen teacher of a distillation run (``toolkit.engines.DistillationIteration``),
or an ImageNet classifier as the teacher of pretrain_ssl's ``distill`` method (`imagenet_teacher`).

The teacher is a bundle folder (its ``configs/inference.json`` network definition and
``models/model.pt``, loaded as `cit infer` loads it) or a checkpoint file with its
``model_info.json`` beside it. Its recorded preprocessing is reconciled with the student's: the
same tensor when they agree, else :class:`TeacherInput` converts the student's (augmented) input
tensor to what the teacher was trained on (undo / redo the intensity normalisation, colour, channels,
size), or the run is refused with both preprocessings named.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from toolkit.bundle.description import load_model_info
from toolkit.bundle.legacy_records import imagenet_statistics
from toolkit.bundle.loading import load_bundle, load_weights
from toolkit.engines import prepare_network
from toolkit.engines.distillation import FrozenTeacher
from toolkit.networks import create_network, input_normalisation
from toolkit.transforms.utility import AsChannels, colour_policy

logger = logging.getLogger(__name__)

# intensity families whose map from the [0, 1] min-max image is known exactly (so it can be undone / redone)
INVERTIBLE = ("minmax", "imagenet")
# preprocessing keys a teacher and a student may differ in without any conversion; a recorded chain
# ("transforms") is compared through the facts read from it, unless its intensity is no preset's
IGNORED = ("reader_max_size", "resize_mode", "transforms")
# the defaults of older records, for descriptions that leave a key out
DEFAULTS = {"channels": 3, "colour": "rgb", "intensity": "minmax", "intensity_kwargs": {}}


class TeacherMismatchError(ValueError):
    """The teacher cannot be used for this student (classes or preprocessing that cannot be reconciled)."""


def load_teacher(
    teacher: str | os.PathLike | None,
    student_preprocessing: dict,
    class_names: list[str],
    device: torch.device | str = "cpu",
    split_fingerprint: str | None = None,
    require_same_split: bool = True,
    how_to_train: str = "",
) -> FrozenTeacher | None:
    """The frozen teacher for a student with ``student_preprocessing`` and ``class_names``.

    ``teacher``: a bundle folder, or a weights file (``models/model.pt``) with its
    ``model_info.json`` beside it; None / "" = no teacher (returns None). A missing teacher is a
    ``FileNotFoundError`` ending with ``how_to_train`` (the commands that make it).
    ``split_fingerprint``: the student's split. A teacher trained on another split may have
    learnt the student's validation / test images, so it is refused (``require_same_split``) or
    only warned about (``require_same_split=False``, for a teacher trained on independent data).
    """
    if not teacher:
        logger.warning(
            "no teacher (teacher_ckpt is null): training WITHOUT distillation, the distillation head "
            "learns the labels. %s",
            how_to_train,
        )
        return None
    path = Path(teacher).expanduser()
    if path.is_dir() and (path / "configs" / "inference.json").is_file():
        bundle = load_bundle(path, device="cpu")
        network, info, source = bundle.network, bundle.model_info, f"bundle {path} ({bundle.ckpt_path})"
    elif path.is_file():
        info = load_model_info(path)
        network = info.create_network()
        load_weights(network, path)
        source = str(path)
    else:
        raise FileNotFoundError(
            f"teacher not found: {path} is neither a weights file nor a bundle folder. {how_to_train}"
        )
    if info.multi_label:
        raise TeacherMismatchError(
            f"teacher {source} is a multi-label model; distillation needs a single-label one"
        )
    if list(info.class_names) != [str(c) for c in class_names]:
        raise TeacherMismatchError(
            f"teacher {source} was trained on classes {info.class_names}, the student on {list(class_names)}: "
            "they must be the same classes in the same order"
        )
    if split_fingerprint and info.split_fingerprint != split_fingerprint:
        message = (
            f"teacher {source} was trained on split {info.split_fingerprint}, the student's split is {split_fingerprint}: "
            "the teacher may have learnt the student's validation / test images"
        )
        if require_same_split:
            raise TeacherMismatchError(
                f"{message}. Train the teacher on the student's split (same dataset_dir, seed and split options), "
                "or set teacher_require_same_split false if its training data is independent of the student's"
            )
        logger.warning(message)
    adapter = teacher_input(student_preprocessing, info.preprocessing, source)
    network = prepare_network(network, device)
    logger.info(
        "teacher: %s (%s, trained on split %s)", source, info.network.get("name"), info.split_fingerprint
    )
    return FrozenTeacher(network, adapter).to(device)


def imagenet_teacher(
    name: str,
    student_preprocessing: dict,
    image_size: int | None = None,
    device: torch.device | str = "cpu",
) -> FrozenTeacher:
    """The ImageNet-1k classifier ``name`` with its 1,000-class head, frozen, as the teacher whose output
    a trunk learns to match (``toolkit.engines.ssl``'s ``distill``).

    Its weights are found offline as ``pretrained: imagenet`` finds them (e.g. the packaged
    ``tf_efficientnet_lite0``); it refuses to start without them rather than teach from random
    weights. It sees the student's tensor converted to its own input: three channels, the
    normalisation of its weights (timm's pretrained config), ``image_size`` (None = the student's).
    """
    network = create_network(name, num_classes=1000, pretrained="imagenet", pretrained_fallback="error")
    student = {k: v for k, v in dict(student_preprocessing).items() if v is not None}
    teacher = {
        **student,
        "channels": 3,
        "intensity": "imagenet",
        "intensity_kwargs": input_normalisation(name),
        "image_size": image_size or student.get("image_size"),
    }
    adapter = teacher_input(student, teacher, source=f"ImageNet teacher {name}")
    return FrozenTeacher(network, adapter).to(device)


def teacher_input(student: dict, teacher: dict, source: str = "the teacher") -> TeacherInput | None:
    """None when the teacher takes the student's tensor as it is, else the :class:`TeacherInput`
    converting it; :class:`TeacherMismatchError` when no exact conversion exists."""
    s, t = _normal(student), _normal(teacher)
    others = sorted(
        k for k in set(s) | set(t) if k not in (*IGNORED, "image_size", *DEFAULTS) and s.get(k) != t.get(k)
    )
    if others:
        raise TeacherMismatchError(
            f"{source}: preprocessing differs in {', '.join(others)} (student {_show(s, others)}, teacher "
            f"{_show(t, others)}); only image_size, channels, colour and the minmax / imagenet intensity can be converted"
        )
    if "recorded" in (s["intensity"], t["intensity"]) and s.get("transforms") != t.get("transforms"):
        raise TeacherMismatchError(
            f"{source}: the teacher's and the student's recorded preprocessing differ and no intensity family "
            "describes them, so the student's input cannot be converted; train the student with the teacher's chain"
        )
    if all(s.get(k) == t.get(k) for k in ("image_size", *DEFAULTS)):
        logger.info("teacher input: the student's tensor as it is (same preprocessing)")
        return None
    convert = any(s[k] != t[k] for k in DEFAULTS)  # a resize alone needs no trip through [0, 1]
    if convert and not (s["intensity"] in INVERTIBLE and t["intensity"] in INVERTIBLE):
        raise TeacherMismatchError(
            f"{source}: the teacher was trained with intensity {t['intensity']!r} {t['intensity_kwargs'] or ''}, "
            f"{t['channels']} channel(s), colour {t['colour']!r}; the student with {s['intensity']!r} "
            f"{s['intensity_kwargs'] or ''}, {s['channels']} channel(s), colour {s['colour']!r}: converting between them "
            f"needs the intensity {' / '.join(INVERTIBLE)} on both sides; train the student with the teacher's preprocessing"
        )
    if t["colour"] == "rgb" and t["channels"] == 3 and (s["colour"] == "grey" or s["channels"] == 1):
        raise TeacherMismatchError(
            f"{source}: the teacher was trained on colour images (colour 'rgb', 3 channels), the student's input is grey "
            f"(colour {s['colour']!r}, {s['channels']} channel(s)): the teacher would see images unlike its training data"
        )
    adapter = TeacherInput(s, t, convert=convert)
    logger.info("teacher input: %s", adapter.describe())
    return adapter


class TeacherInput(torch.nn.Module):
    """The student's input batch ``(B, C, H, W)`` as the teacher's preprocessing makes it: back to
    the [0, 1] image, colour / channels as the teacher's, resized (bilinear, antialiased), min-max
    per image and the teacher's intensity normalisation. With ``convert=False`` (same intensity, channels and colour on
    both sides) only the resize runs, on the normalised tensor."""

    def __init__(self, student: dict, teacher: dict, convert: bool = True):
        super().__init__()
        self.student, self.teacher, self.convert = _normal(student), _normal(teacher), convert
        self.channels = AsChannels(self.teacher["channels"], self.teacher["colour"])
        size = self.teacher["image_size"]
        self.size = None if size == self.student["image_size"] else (int(size), int(size))

    def describe(self) -> str:
        s, t = self.student, self.teacher
        steps = []
        if self.convert:
            steps.append(f"{s['intensity']} -> [0, 1]")
        if (s["channels"], s["colour"]) != (t["channels"], t["colour"]):
            steps.append(f"{s['channels']} ch {s['colour']} -> {t['channels']} ch {t['colour']}")
        if self.size:
            steps.append(f"resize {s['image_size']} -> {t['image_size']} px")
        if self.convert:
            steps.append(f"[0, 1] -> {t['intensity']}")
        return "student's tensor converted: " + ", ".join(steps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.convert:
            x = _to_unit(x, self.student)
            x = self.channels(x.transpose(0, 1)).transpose(0, 1)  # AsChannels works on dim 0
        if self.size:
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False, antialias=True)
        return _from_unit(x, self.teacher) if self.convert else x


def _imagenet_stats(prep: dict, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean / std of an ``imagenet`` intensity, as the model's chain applies them."""
    mean, std = imagenet_statistics(prep["intensity_kwargs"], prep["channels"])

    def shaped(values):
        return torch.as_tensor(values, dtype=like.dtype, device=like.device).view(1, -1, 1, 1)

    return shaped(mean), shaped(std)


def _to_unit(x: torch.Tensor, prep: dict) -> torch.Tensor:
    if prep["intensity"] == "imagenet":
        mean, std = _imagenet_stats(prep, x)
        return x * std + mean
    return x  # minmax: already the [0, 1] image


def _from_unit(x: torch.Tensor, prep: dict) -> torch.Tensor:
    # both presets start with a min-max of the image as the teacher's chain made it (after its colour /
    # channel conversion, e.g. the luminance of the RGB image), so it is done again on the converted one
    low = x.amin(dim=(1, 2, 3), keepdim=True)
    span = (x.amax(dim=(1, 2, 3), keepdim=True) - low).clamp_min(1e-8)
    x = (x - low) / span
    if prep["intensity"] == "imagenet":
        mean, std = _imagenet_stats(prep, x)
        return (x - mean) / std
    return x


def _normal(prep: dict) -> dict:
    out = {**DEFAULTS, **{k: v for k, v in dict(prep).items() if v is not None}}
    out["colour"] = colour_policy(out["colour"])
    out["intensity_kwargs"] = dict(out["intensity_kwargs"] or {})
    out["channels"], out["image_size"] = int(out["channels"]), out.get("image_size")
    return out


def _show(prep: dict, keys) -> str:
    return ", ".join(f"{k}={prep.get(k)!r}" for k in keys)
