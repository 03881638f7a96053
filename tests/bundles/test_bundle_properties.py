"""MONAI's bundle contract: every workflow file of every bundle passes ``ConfigWorkflow.check_properties``.

MONAI's tools (``create_workflow``, ``monai.bundle.load``, the model zoo's CI, MONAI Label and
Deploy) find a bundle's trainer, evaluator, dataset, network and transforms by the ids of
``monai.bundle.properties`` (TrainProperties, InferProperties). Checked as MONAI does it: the
workflow is initialised and each required property is built (so datasets and networks are
made: tiny synthetic data, random weights), then the optional ids the config refers to are checked.
In the repository (base macros resolved from the repository root, as the README runs bundles),
on a trained model, and on an exported copy run from another folder. Every bundle's train.json
(and its untrained inference.json) is also checked by `cit verify-bundle`'s test
(tests/bundles/test_verify_bundle.py), which runs the same MONAI check.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
from monai.bundle import ConfigWorkflow

from tests.bundles.bundle_helpers import REPO_ROOT
from toolkit.bundle.configs import read_config
from toolkit.data import make_synthetic_dataset

BUNDLES = sorted(
    p.name for p in (REPO_ROOT / "bundles").iterdir() if (p / "configs" / "metadata.json").is_file()
)
CLASSIFIERS = [b for b in BUNDLES if (REPO_ROOT / "bundles" / b / "configs" / "inference.json").is_file()]


def check(config_files: list[Path], workflow_type: str, **overrides) -> list[str]:
    """MONAI's check: ``initialize()``, then ``check_properties()`` (missing or wrongly referenced ids).

    A multi-GPU overlay's own ``initialize`` / ``finalize`` (the process group) are not run here:
    they would leave Ignite's distributed state behind in this process; the torchrun tests run them.
    """
    configs = config_files[0].parent
    overlay = any(f.name.startswith("multi_gpu_") for f in config_files)
    workflow = ConfigWorkflow(
        config_file=[str(f) for f in config_files],
        meta_file=str(configs / "metadata.json"),
        logging_file=False,
        workflow_type=workflow_type,
        init_id="not_run" if overlay else "initialize",
        final_id="not_run" if overlay else "finalize",
        **overrides,
    )
    workflow.initialize()
    return workflow.check_properties()


def configs(bundle: str, *names: str, root: Path = REPO_ROOT / "bundles") -> list[Path]:
    return [root / bundle / "configs" / f"{n}.json" for n in names]


@pytest.fixture
def in_repo(monkeypatch):
    """The README's working directory: the configs' base macros are relative to the repository root."""
    monkeypatch.chdir(REPO_ROOT)
    logging.getLogger("monai.bundle").setLevel(logging.ERROR)


def tiny(tmp: Path, bundle: str) -> dict:
    """Overrides that keep a property check fast: outputs in ``tmp``, the bundle's synthetic data
    (its own classes and dimensions), nothing cached, random weights."""
    return {
        "output_dir": str(tmp / bundle / "output"),
        "ckpt_dir": str(tmp / bundle / "models"),
        "cache_rate": 0.0,
        "pretrained": None,
    }


@pytest.mark.parametrize(
    "bundle",
    [b for b in BUNDLES if (REPO_ROOT / "bundles" / b / "configs" / "multi_gpu_train.json").is_file()],
)
def test_multi_gpu_overlays_add_only_the_process_group(bundle):
    """So the property check of ``[train.json, multi_gpu_train.json]`` is that of train.json (run on
    every bundle by cit verify-bundle's test), and likewise for evaluation; one bundle is checked in
    full below."""
    for overlay in ("multi_gpu_train", "multi_gpu_evaluate"):
        doc = json.loads((REPO_ROOT / "bundles" / bundle / "configs" / f"{overlay}.json").read_text())
        assert set(doc) - {"_base_"} == {"_desc_", "initialize", "finalize"}  # _base_: where they come from


@pytest.mark.slow
def test_train_overlay_and_supervised_pretraining_have_monai_train_properties(tmp_path, in_repo):
    assert (
        check(
            configs("resnet18_brain_ct", "train", "multi_gpu_train"),
            "train",
            **tiny(tmp_path, "resnet18_brain_ct"),
        )
        == []
    )
    assert check(configs("pretrain_ssl", "supervised"), "train", **tiny(tmp_path, "pretrain_ssl")) == []


@pytest.mark.parametrize("bundle", CLASSIFIERS)
def test_untrained_inference_workflow_has_monai_infer_properties(bundle, tmp_path, in_repo):
    """As shipped (no weights): the bundle's study_model stands in for the trained record."""
    data = tmp_path / "images"
    make_synthetic_dataset(data, n_patients=3, images_per_patient=1, image_size=16, seed=0)
    assert (
        check(configs(bundle, "inference"), "infer", ckpt_dir=str(tmp_path / "models"), dataset_dir=str(data))
        == []
    )


@pytest.mark.parametrize("bundle", CLASSIFIERS)
def test_study_model_is_what_training_with_the_defaults_records(bundle):
    """inference.json's study_model repeats train.json's recipe; this keeps the two from drifting apart."""
    from monai.bundle import ConfigParser

    study = json.loads((REPO_ROOT / "bundles" / bundle / "configs" / "inference.json").read_text())[
        "study_model"
    ]
    meta = json.loads((REPO_ROOT / "bundles" / bundle / "configs" / "metadata.json").read_text())
    train = ConfigParser(read_config(REPO_ROOT / "bundles" / bundle / "configs" / "train.json"))
    train.resolve_macro_and_relative_ids()
    ids = {k: train.get_parsed_content(k) for k in ("model_name", "channels", "model_kwargs")}
    classes = meta["network_data_format"]["outputs"]["pred"]["channel_def"]
    assert study["class_names"] == [classes[str(i)] for i in range(len(classes))]
    expected_network = {
        "name": ids["model_name"],
        "num_classes": len(classes),
        "in_channels": ids["channels"],
        **ids["model_kwargs"],
    }
    assert study["network"] == expected_network
    # the facts of the record; its recorded chain ("transforms") would be built by MONAI's parser inside
    # a bundle config, so the untrained stand-in rebuilds the same chain from the facts
    prep = train.get_parsed_content("evaluation_preprocessing")
    assert study["preprocessing"] == {k: v for k, v in prep.items() if v is not None and k != "transforms"}
    synthetic = (train.get_parsed_content("split") or {}).get("synthetic") or {}
    assert study.get("multi_label", False) == synthetic.get("multi_label", False)


@pytest.fixture(scope="module")
def trained(tiny_brain_ct):
    """A tiny trained brain CT model (conftest); every bundle's evaluate.json / inference.json is checked
    against it (the files differ only in bundle_name, batch size and study_model)."""
    return tiny_brain_ct


@pytest.mark.slow
@pytest.mark.parametrize("bundle", CLASSIFIERS)
def test_evaluation_and_inference_of_a_trained_model_have_monai_properties(bundle, trained, in_repo):
    ids = {"ckpt_dir": str(trained / "models"), "output_dir": str(trained / "output")}
    assert check(configs(bundle, "evaluate"), "eval", **ids) == []
    assert check(configs(bundle, "evaluate", "multi_gpu_evaluate"), "eval", **ids) == []
    assert check(configs(bundle, "train", "evaluate"), "eval", **ids) == [], (
        "evaluate.json as an overlay on train.json"
    )
    assert check(configs(bundle, "inference"), "infer", **ids) == []


@pytest.mark.slow
def test_exported_copy_has_monai_properties_from_another_folder(trained, tmp_path, monkeypatch):
    from toolkit.bundle.export import pack_bundle

    packed = pack_bundle(
        REPO_ROOT / "bundles" / "resnet18_brain_ct",
        tmp_path / "copy" / "resnet18_brain_ct",
        ckpt_dir=trained / "models",
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    ids = {"bundle_root": str(packed), "output_dir": str(trained / "output")}
    datalist = trained / "data" / "datalist.json"
    assert (
        check(
            configs("resnet18_brain_ct", "train", root=packed.parent),
            "train",
            dataset_dir=str(datalist),
            cache_rate=0.0,
            pretrained=None,
            output_dir=str(tmp_path / "out"),
        )
        == []
    )
    assert check(configs("resnet18_brain_ct", "evaluate", root=packed.parent), "eval", **ids) == []
    assert check(configs("resnet18_brain_ct", "inference", root=packed.parent), "infer", **ids) == []
    study = json.loads((packed / "configs" / "inference.json").read_text())["study_model"]
    recorded = json.loads((trained / "models" / "model_info.json").read_text())
    facts = {k: v for k, v in recorded["preprocessing"].items() if k != "transforms"}
    assert study["network"] == recorded["network"] and study["preprocessing"] == facts
    assert recorded["preprocessing"]["transforms"]  # the chain is in the model's own record
    assert not os.path.exists(packed / "output"), "the check wrote into the copy"


def test_an_untrained_bundle_passes_verify_net_in_out_and_ckpt_export(tmp_path, in_repo):
    """MONAI's own tools on a bundle as shipped (no model_info.json, no weights): train.json's
    ``network_def`` is built from the configuration, so ``verify_net_in_out`` runs, and ``ckpt_export``
    turns a checkpoint given from elsewhere into TorchScript that answers as the network does."""
    import torch
    from monai.bundle import ckpt_export, verify_net_in_out

    from toolkit.bundle.configs import bundle_parser

    bundle = REPO_ROOT / "bundles" / "resnet18_brain_ct"
    meta, train = str(bundle / "configs" / "metadata.json"), str(bundle / "configs" / "train.json")
    ids = {"ckpt_dir": str(tmp_path / "models")}  # holds nothing: the bundle is untrained
    verify_net_in_out("network_def", meta_file=meta, config_file=train, device="cpu", **ids)
    parser = bundle_parser(bundle, **ids)
    parser.read_meta(meta)
    network = parser.get_parsed_content("network_def").eval()
    torch.save(network.state_dict(), tmp_path / "weights.pt")
    exported = tmp_path / "model.ts"
    ckpt_export(
        "network_def",
        filepath=str(exported),
        ckpt_file=str(tmp_path / "weights.pt"),
        meta_file=meta,
        config_file=train,
        use_trace=True,
        **ids,
    )
    image = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.load(str(exported))(image), network(image), atol=1e-4, rtol=0)
    assert not (tmp_path / "models").exists()  # nothing was trained or written into the bundle
