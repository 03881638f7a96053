"""Pretrained weights: real HTTP downloads with hash checks, the offline ImageNet lookup, and loading."""

from __future__ import annotations

import functools
import hashlib
import http.server
import logging
import shutil
import socket
import threading
from pathlib import Path

import pytest
import timm
import torch

from toolkit.networks import (
    LoadReport,
    PretrainedWeightsUnavailable,
    WeightsIntegrityError,
    create_network,
    download_weights,
    load_pretrained,
)

NO_RESNET18_WEIGHTS = "No pretrained ImageNet weights found for 'resnet18'"


@pytest.fixture(scope="module")
def resnet18_checkpoint(module_tmp) -> tuple[Path, str, dict]:
    """A resnet18 state_dict with a 1000-class head, as an ImageNet checkpoint would have."""
    torch.manual_seed(0)
    state = timm.create_model("resnet18", num_classes=1000).state_dict()
    path = module_tmp("ckpt") / "resnet18_imagenet.pth"
    torch.save(state, path)
    return path, hashlib.sha256(path.read_bytes()).hexdigest(), state


class _CountingHandler(http.server.SimpleHTTPRequestHandler):
    requests: list[str] = []

    def do_GET(self):  # noqa: N802 - http.server's naming
        type(self).requests.append(self.path)
        super().do_GET()

    def log_message(self, *args):  # keep test output quiet
        pass


@pytest.fixture
def http_server(tmp_path, resnet18_checkpoint):
    """A real HTTP server on 127.0.0.1 serving a folder; yields (base_url, folder, stop, requests)."""
    folder = tmp_path / "served"
    folder.mkdir()
    handler = type("Handler", (_CountingHandler,), {"requests": []})
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(handler, directory=str(folder))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    stopped = []

    def stop():
        if not stopped:
            server.shutdown()
            server.server_close()
            stopped.append(True)

    yield f"http://127.0.0.1:{server.server_address[1]}", folder, stop, handler.requests
    stop()


@pytest.fixture
def isolated_caches(tmp_path, monkeypatch):
    """Empty $CIT_WEIGHTS_DIR, Hugging Face cache and torch.hub dir, so results do not depend on this machine."""
    import huggingface_hub.constants

    weights = tmp_path / "weights"
    monkeypatch.setenv("CIT_WEIGHTS_DIR", str(weights))
    monkeypatch.delenv("CIT_ALLOW_DOWNLOAD", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    old_hub = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "torch_hub"))
    yield weights
    torch.hub.set_dir(old_hub)


def _no_network(monkeypatch):
    """Make any outgoing connection fail loudly: the offline lookup must never try one."""

    def refuse(self, address):
        raise AssertionError(f"unexpected network connection to {address}")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def test_download_with_sha256_loads_and_reports_head_mismatch(http_server, resnet18_checkpoint, tmp_path):
    path, sha, state = resnet18_checkpoint
    base, folder, stop, requests = http_server
    shutil.copy(path, folder / "resnet18.pth")
    cache = tmp_path / "cache"

    model = create_network(
        "resnet18", num_classes=3, pretrained=f"{base}/resnet18.pth", weights_sha256=sha, cache_dir=cache
    )

    report = model.pretrained_report
    assert isinstance(report, LoadReport)
    assert set(report.mismatched) == {"fc.weight", "fc.bias"}
    assert "conv1.weight" in report.loaded and "layer4.1.bn2.running_var" in report.loaded
    assert len(report.loaded) == len(state) - 2
    assert report.missing == [] and report.unexpected == []
    assert torch.equal(model.layer3[0].conv1.weight, state["layer3.0.conv1.weight"])
    assert model.fc.weight.shape == (3, 512)
    assert "2 shape-mismatched" in report.summary()
    assert [p.name for p in cache.iterdir()] == ["resnet18.pth"]
    assert len(requests) == 1

    # Second time: served from the cache even with the server gone.
    stop()
    again = create_network(
        "resnet18", num_classes=3, pretrained=f"{base}/resnet18.pth#sha256={sha}", cache_dir=cache
    )
    assert torch.equal(again.layer1[0].conv1.weight, state["layer1.0.conv1.weight"])
    assert len(requests) == 1


def test_wrong_sha256_raises_and_leaves_no_file(http_server, resnet18_checkpoint, tmp_path):
    path, sha, _ = resnet18_checkpoint
    base, folder, _, _ = http_server
    shutil.copy(path, folder / "resnet18.pth")
    cache = tmp_path / "cache"
    wrong = "0" * 64

    with pytest.raises(WeightsIntegrityError, match=wrong) as err:
        download_weights(f"{base}/resnet18.pth", sha256=wrong, cache_dir=cache)

    message = str(err.value)
    assert f"{base}/resnet18.pth" in message and wrong in message and sha in message
    assert list(cache.iterdir()) == []


def test_torch_hub_style_hash_prefix(http_server, resnet18_checkpoint, tmp_path):
    path, sha, _ = resnet18_checkpoint
    base, folder, _, _ = http_server
    good, bad = f"resnet18-{sha[:10]}.pth", "resnet18-deadbeef00.pth"
    shutil.copy(path, folder / good)
    shutil.copy(path, folder / bad)
    cache = tmp_path / "cache"

    assert download_weights(f"{base}/{good}", cache_dir=cache) == cache / good
    with pytest.raises(WeightsIntegrityError, match="deadbeef00"):
        download_weights(f"{base}/{bad}", cache_dir=cache)
    assert sorted(p.name for p in cache.iterdir()) == [good]


def test_download_without_any_hash_is_refused(http_server, resnet18_checkpoint, tmp_path):
    path, _, _ = resnet18_checkpoint
    base, folder, _, requests = http_server
    shutil.copy(path, folder / "resnet18.pth")
    with pytest.raises(ValueError, match="integrity check"):
        download_weights(f"{base}/resnet18.pth", cache_dir=tmp_path / "cache")
    assert requests == []


def test_offline_imagenet_without_weights_raises_with_how_to(isolated_caches, monkeypatch):
    _no_network(monkeypatch)
    with pytest.raises(PretrainedWeightsUnavailable, match=NO_RESNET18_WEIGHTS) as err:
        create_network("resnet18", num_classes=2, pretrained="imagenet")
    message = str(err.value)
    assert "resnet18" in message
    assert str(isolated_caches / "resnet18.pth") in message  # where it looked / where to put the file
    assert "Hugging Face cache" in message and "torch.hub cache" in message
    assert "#sha256=" in message and "CIT_ALLOW_DOWNLOAD=1" in message


def test_offline_imagenet_warn_falls_back_to_random(isolated_caches, monkeypatch, caplog):
    _no_network(monkeypatch)
    with caplog.at_level(logging.WARNING):
        model = create_network("resnet18", num_classes=2, pretrained=True, pretrained_fallback="warn")
    assert any(
        "RANDOM INITIALISATION" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING
    )
    assert model.pretrained_report.loaded == []
    assert "No pretrained ImageNet weights found for 'resnet18'" in model.pretrained_report.warning


def test_imagenet_picks_up_file_in_weights_dir(isolated_caches, resnet18_checkpoint, monkeypatch):
    path, _, state = resnet18_checkpoint
    isolated_caches.mkdir()
    shutil.copy(path, isolated_caches / "resnet18.pth")
    _no_network(monkeypatch)
    model = create_network("resnet18", num_classes=4, pretrained="imagenet")
    assert model.pretrained_report.source == str(isolated_caches / "resnet18.pth")
    assert torch.equal(model.conv1.weight, state["conv1.weight"])


def test_imagenet_picks_up_hugging_face_cache(isolated_caches, tmp_path, monkeypatch):
    """A timm checkpoint in the real huggingface_hub cache layout is found without network access."""
    from safetensors.torch import save_file

    model = timm.create_model("efficientnet_b0", num_classes=1000)
    repo = tmp_path / "hf" / f"models--{model.pretrained_cfg['hf_hub_id'].replace('/', '--')}"
    snapshot = repo / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(snapshot / "model.safetensors"))
    _no_network(monkeypatch)

    net = create_network("efficientnet_b0", num_classes=2, pretrained="imagenet")
    assert net.pretrained_report.source == str(snapshot / "model.safetensors")
    assert set(net.pretrained_report.mismatched) == {"classifier.weight", "classifier.bias"}
    assert torch.equal(net.conv_stem.weight, state["conv_stem.weight"])


def test_grey_scale_model_sums_rgb_first_conv(resnet18_checkpoint):
    path, _, state = resnet18_checkpoint
    model = create_network("resnet18", num_classes=2, in_channels=1, pretrained=path)
    assert model.conv1.weight.shape == (64, 1, 7, 7)
    assert torch.allclose(model.conv1.weight, state["conv1.weight"].sum(dim=1, keepdim=True))
    assert model.pretrained_report.adapted and "conv1.weight" in model.pretrained_report.loaded
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 1, 64, 64)).shape == (2, 2)


def test_nested_and_prefixed_checkpoint(resnet18_checkpoint, tmp_path):
    """{"state_dict": {"module.<key>": ...}} as written by DataParallel training scripts."""
    _, _, state = resnet18_checkpoint
    nested = tmp_path / "nested.pt"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, nested)
    model = timm.create_model("resnet18", num_classes=1000)
    report = load_pretrained(model, nested)
    assert report.mismatched == [] and report.missing == [] and len(report.loaded) == len(state)
    assert model.pretrained_report is report
    assert torch.equal(model.fc.weight, state["fc.weight"])


def test_checkpoint_of_another_architecture_is_an_error(tmp_path):
    other = tmp_path / "unet.pth"
    torch.save({"encoder.0.weight": torch.zeros(8, 3, 3, 3)}, other)
    with pytest.raises(ValueError, match="unet.pth.*wrong architecture"):
        create_network("resnet18", num_classes=2, pretrained=other)


def test_missing_and_corrupt_files_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        create_network("resnet18", num_classes=2, pretrained=tmp_path / "absent.pth")
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="corrupt.pth"):
        create_network("resnet18", num_classes=2, pretrained=corrupt)


def test_deit_weights_at_another_image_size_resample_position_embedding(tmp_path):
    source = timm.create_model("deit_tiny_distilled_patch16_224", num_classes=1000)
    path = tmp_path / "deit.pth"
    torch.save({"model": source.state_dict()}, path)  # DeiT's own release format
    model = create_network("deit_tiny_distilled_patch16_224", num_classes=2, img_size=64, pretrained=path)
    report = model.pretrained_report
    assert "pos_embed" in report.loaded and any(a.startswith("pos_embed") for a in report.adapted)
    assert set(report.mismatched) == {"head.weight", "head.bias", "head_dist.weight", "head_dist.bias"}
    # The class and distillation tokens' embeddings are carried over unchanged.
    assert torch.equal(model.pos_embed[:, :2], source.pos_embed[:, :2])
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 3, 64, 64)).shape == (2, 2)


def test_http_error_names_the_url_and_leaves_nothing(http_server, tmp_path):
    base, _, _, _ = http_server
    cache = tmp_path / "cache"
    with pytest.raises(OSError, match="absent.pth.*404"):
        download_weights(f"{base}/absent.pth#sha256={'a' * 64}", cache_dir=cache)
    assert list(cache.iterdir()) == []


def test_default_download_folder_is_not_the_imagenet_lookup(
    http_server, resnet18_checkpoint, isolated_caches
):
    """A URL's resnet18.pth must not later pass for the ImageNet weights of resnet18."""
    path, sha, _ = resnet18_checkpoint
    base, folder, _, _ = http_server
    shutil.copy(path, folder / "resnet18.pth")
    downloaded = download_weights(f"{base}/resnet18.pth", sha256=sha)
    assert downloaded == isolated_caches / "downloads" / "resnet18.pth"
    with pytest.raises(PretrainedWeightsUnavailable, match=NO_RESNET18_WEIGHTS):
        create_network("resnet18", num_classes=2, pretrained="imagenet")
