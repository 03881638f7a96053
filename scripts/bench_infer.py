"""Benchmark of batch inference (issue 4): where the time goes and whether `cit infer` uses it well.

Writes N DICOM files per kind (16-bit, 1024 and 2048 px, uncompressed and JPEG 2000 lossless),
then measures, in one process on the same files:

  (a) model_only      images/s of the bundle's network on pre-loaded tensors (batch, channels_last)
  (b) loader          images/s of decode + the bundle's preprocessing through the DataLoader
  (c) cit_infer       images/s of `cit infer` end to end (discovery, loading, model, CSV), same workers
  (d) per_file_monai  images/s of a per-file loop: MONAI LoadImage(PydicomReader) + EnsureChannelFirst +
                      ScaleIntensity + Resize + repeat to 3 channels, then predict one image at a time
  (a_onnx, c_onnx)    (a) and (c) with the ONNX Runtime backend on an ONNX export of the same weights
                      (`cit export --format onnx`, checked against the eager model on the written files)
  (a_int8, c_int8)    the same with the int8 export (`cit export --format onnx --int8`: ONNX Runtime static
                      quantization, calibrated on half of the files; its accuracy guard is loosened here, the
                      weights being random: this measures speed only)
  (a_bf16, c_bf16)    the PyTorch backend with `--precision bf16`, where the CPU has native bf16 (its bf16
                      check, `cit export --format bf16-check`, loosened like the int8 guard)
  (jpeg_c_*)          `cit infer` end to end per backend on --jpeg 224 px JPEG files (decoding is cheap there)

and prints JSON with the ratios against the targets: (c) >= 0.9 * 1/(1/a + 1/b) (both stages share
the CPU) and (c) >= 3 * (d), and those of issue 29: int8 >= 2x ONNX fp32 (model only), int8 end to end
>= 1.8x ONNX fp32 on JPEG, int8 end to end >= 0.9x its stage bound on DICOM (also given for the
loading + predicting phase alone, without the run's fixed costs). The network has random
weights (speed does not depend on them). The CPU's flags that matter (from lscpu) are in the JSON.

    python scripts/bench_infer.py --n 8 --workers 2 --threads 2 --jpeg 64
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "resnet18_brain_ct"


def write_files(folder: Path, n: int, sizes: list[int]) -> list[Path]:
    """N files per (size, encoding): a smooth 12-bit 'anatomy' plus noise, so J2K has real work."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import (
        DigitalXRayImageStorageForPresentation,
        ExplicitVRLittleEndian,
        JPEG2000Lossless,
        generate_uid,
    )

    rng = np.random.default_rng(0)
    paths = []
    for size in sizes:
        yy, xx = np.mgrid[0:size, 0:size] / size
        base = 2000 + 1500 * np.sin(6 * xx) * np.cos(4 * yy)
        for encoding in ("raw", "j2k"):
            for i in range(n):
                arr = (base + rng.normal(0, 60, base.shape)).clip(0, 4095).astype(np.uint16)
                meta = FileMetaDataset()
                meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
                meta.MediaStorageSOPInstanceUID = generate_uid()
                meta.TransferSyntaxUID = ExplicitVRLittleEndian
                ds = pydicom.Dataset()
                ds.file_meta = meta
                ds.SOPClassUID, ds.SOPInstanceUID = (
                    meta.MediaStorageSOPClassUID,
                    meta.MediaStorageSOPInstanceUID,
                )
                ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
                ds.Modality, ds.Rows, ds.Columns = "DX", size, size
                ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
                ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
                ds.PixelData = arr.tobytes()
                if encoding == "j2k":
                    ds.compress(JPEG2000Lossless)
                path = folder / f"{size}_{encoding}" / f"IM{i:04d}"
                path.parent.mkdir(parents=True, exist_ok=True)
                ds.save_as(path, enforce_file_format=True)
                paths.append(path)
    return paths


def bench_model(bundle, batch_size: int, repeats: int, network=None) -> float:
    """images/s of ``network`` (default: the bundle's, channels_last) on one random batch, repeated."""
    from toolkit.engines import prepare_network

    size = bundle.image_size or (224, 224)
    net = network if network is not None else prepare_network(bundle.network, "cpu").eval()
    x = torch.randn(batch_size, 3, *size).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        net(x)  # warm-up
        start = time.perf_counter()
        for _ in range(repeats):
            net(x)
    return batch_size * repeats / (time.perf_counter() - start)


def bench_loader(bundle, paths: list[Path], batch_size: int, workers: int) -> float:
    from toolkit.inference.discovery import InputItem
    from toolkit.inference.runner import InferenceDataset, collate_by_shape

    items = [InputItem(path=p.name, abs_path=str(p), kind="dicom") for p in paths]
    loader = torch.utils.data.DataLoader(
        InferenceDataset(items, bundle.preprocessing, bundle.image_size),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=collate_by_shape,
        prefetch_factor=4 if workers else None,
    )
    start = time.perf_counter()
    n = 0
    for batch in loader:
        errors = [r["error"] for r in batch.records if r["error"]]
        assert not errors, errors
        n += len(batch.records)
    return n / (time.perf_counter() - start)


def bench_cit_infer(
    folder: Path,
    ckpt: Path,
    out: Path,
    batch_size: int,
    workers: int,
    n: int,
    overrides: dict,
    backend: str = "pytorch",
    precision: str = "fp32",
    threads: int = 0,
) -> tuple[float, float]:
    """(end-to-end images/s including bundle loading and discovery, images/s of the loading + predicting phase)"""
    from toolkit.inference.runner import InferenceOptions, run_inference

    options = InferenceOptions(
        bundle=str(BUNDLE),
        input=str(folder),
        output=str(out),
        ckpt_path=str(ckpt),
        device="cpu",
        batch_size=batch_size,
        workers=workers,
        progress=False,
        overrides=overrides,
        backend=backend,
        precision=precision,
        threads=threads,
    )
    start = time.perf_counter()
    summary = run_inference(options)
    seconds = time.perf_counter() - start
    assert summary.counts.get("ok") == n, summary.counts
    return n / seconds, n / summary.processing_seconds


def write_jpegs(folder: Path, n: int, size: int = 224) -> None:
    from PIL import Image

    rng = np.random.default_rng(1)
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = 120 + 80 * np.sin(6 * xx) * np.cos(4 * yy)
    for i in range(n):
        pixels = (base + rng.normal(0, 10, base.shape)).clip(0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"img{i:04d}.jpg", quality=90)


def cpu_flags() -> dict:
    """The CPU model and the flags int8 / bf16 speed depends on, as lscpu states them."""
    import subprocess

    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    flags = set(fields.get("Flags", "").split())
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "amx_tile")
    return {
        "model_name": fields.get("Model name", "").strip(),
        "model": fields.get("Model", "").strip(),
        "flags": {flag: flag in flags for flag in wanted},
    }


def prepare_int8(tmp: Path, paths: list[Path], onnx_path: Path) -> Path:
    """The int8 export of the random weights, calibrated on half of the files (speed only: guard loosened)."""
    from toolkit.bundle.quantize import quantize_onnx

    items = [{"image": str(p), "label": i % 3, "patient_id": f"P{i}"} for i, p in enumerate(paths)]
    (tmp / "output").mkdir(exist_ok=True)
    (tmp / "output" / "datalist.json").write_text(
        json.dumps(
            {
                "labels": ["glioma", "meningioma", "pituitary"],
                "training": items[::2],
                "validation": items[1::2],
                "test": [],
            }
        )
    )
    result = quantize_onnx(
        onnx_path, tmp / "models", tmp / "output", max_auroc_drop=1.0, min_agreement=0.0, n_resamples=100
    )
    return result.path


def bench_per_file_monai(bundle, paths: list[Path]) -> float:
    from monai.data import PydicomReader
    from monai.transforms import Compose, EnsureChannelFirst, LoadImage, RepeatChannel, Resize, ScaleIntensity

    size = bundle.image_size or (224, 224)
    chain = Compose(
        [
            LoadImage(reader=PydicomReader(), image_only=True),
            EnsureChannelFirst(),
            ScaleIntensity(),
            Resize(size),
            RepeatChannel(3),
        ]
    )
    net = bundle.network.eval()
    start = time.perf_counter()
    with torch.inference_mode():
        for p in paths:
            x = torch.as_tensor(chain(str(p))).as_subclass(torch.Tensor).float()[None]
            torch.softmax(net(x), dim=1)
    return len(paths) / (time.perf_counter() - start)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=8, help="files per (size, encoding)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the main process")
    parser.add_argument("--model-repeats", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2, help="measure a-d this many times, report the best")
    parser.add_argument("--jpeg", type=int, default=64, help="224 px JPEG files for the end-to-end JPEG runs")
    parser.add_argument("--model", default=None, help="network (default: the bundle's), e.g. resnet50")
    parser.add_argument(
        "--infer-threads",
        type=int,
        default=0,
        help="`cit infer --threads` of the end-to-end runs (0: its default)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="ID=VALUE",
        help="bundle config override for (b) and (c), e.g. preprocessing#reader_max_size=224",
    )
    args = parser.parse_args(argv)
    bench = functools.partial(bench_cit_infer, threads=args.infer_threads)
    overrides = {}
    for text in args.overrides:
        key, _, value = text.partition("=")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    torch.set_num_threads(args.threads)
    from toolkit.bundle import load_bundle, write_model_info
    from toolkit.bundle.bf16_check import check_bf16, cpu_has_native_bf16
    from toolkit.bundle.configs import trained_preprocessing
    from toolkit.bundle.export import export_model
    from toolkit.engines import prepare_network
    from toolkit.inference.backends import Bf16Network, OnnxRuntimeNetwork

    with tempfile.TemporaryDirectory(prefix="bench_infer_") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        paths = write_files(tmp / "in", args.n, args.sizes)
        write_seconds = time.perf_counter() - t0
        # random weights of the bundle's default network (or --model), described as training describes a model
        train = json.loads((BUNDLE / "configs" / "train.json").read_text())
        model = args.model or train["model_name"]
        info = write_model_info(
            tmp / "models",
            network={"name": model, "num_classes": 3, "in_channels": train["channels"]},
            class_names=["glioma", "meningioma", "pituitary"],
            preprocessing=trained_preprocessing(BUNDLE, model_name=model),
        )
        ckpt = tmp / "models" / "model.pt"
        torch.save(info.create_network().state_dict(), ckpt)
        bundle = load_bundle(
            BUNDLE, ckpt_path=ckpt, device="cpu", overrides={**overrides, "model_name": model}
        )
        onnx = export_model(BUNDLE, "onnx", ckpt_dir=tmp / "models", check_inputs=tmp / "in")
        onnx_network = OnnxRuntimeNetwork(onnx.path, threads=args.threads)
        int8_network = OnnxRuntimeNetwork(prepare_int8(tmp, paths, onnx.path), threads=args.threads)
        bf16 = cpu_has_native_bf16()
        if bf16:  # `cit infer --precision bf16` runs only checked weights (speed only here: guard loosened)
            check_bf16(tmp / "models", tmp / "output", max_auroc_drop=1.0, min_agreement=0.0, n_resamples=100)
        write_jpegs(tmp / "jpeg", args.jpeg)
        # (backend, precision) of the end-to-end runs
        variants = {
            "pytorch": ("pytorch", "fp32"),
            "onnx": ("onnxruntime", "fp32"),
            "int8": ("onnxruntime-int8", "fp32"),
            **({"bf16": ("pytorch", "bf16")} if bf16 else {}),
        }

        runs = {
            "a": [],
            "a_onnx": [],
            "a_int8": [],
            "b": [],
            "c": [],
            "c_proc": [],
            "c_onnx": [],
            "c_int8": [],
            "c_int8_proc": [],
            "d": [],
            **{f"jpeg_c_{v}": [] for v in variants},
            **({"a_bf16": [], "c_bf16": []} if bf16 else {}),
        }
        for r in range(args.repeats):  # interleaved repeats: the machine's load changes from minute to minute
            runs["a"].append(bench_model(bundle, args.batch_size, args.model_repeats))
            runs["a_onnx"].append(bench_model(bundle, args.batch_size, args.model_repeats, onnx_network))
            runs["a_int8"].append(bench_model(bundle, args.batch_size, args.model_repeats, int8_network))
            if bf16:
                net = Bf16Network(prepare_network(bundle.network, "cpu").eval())
                runs["a_bf16"].append(bench_model(bundle, args.batch_size, args.model_repeats, net))
                runs["c_bf16"].append(
                    bench(
                        tmp / "in",
                        ckpt,
                        tmp / f"bf16{r}",
                        args.batch_size,
                        args.workers,
                        len(paths),
                        overrides,
                        precision="bf16",
                    )[0]
                )
            c_int8, c_int8_proc = bench(
                tmp / "in",
                ckpt,
                tmp / f"int8{r}",
                args.batch_size,
                args.workers,
                len(paths),
                overrides,
                backend="onnxruntime-int8",
            )
            runs["c_int8"].append(c_int8)
            runs["c_int8_proc"].append(c_int8_proc)
            for name, (backend, precision) in variants.items():
                runs[f"jpeg_c_{name}"].append(
                    bench(
                        tmp / "jpeg",
                        ckpt,
                        tmp / f"jpeg_{name}{r}",
                        args.batch_size,
                        args.workers,
                        args.jpeg,
                        overrides,
                        backend=backend,
                        precision=precision,
                    )[0]
                )
            runs["b"].append(bench_loader(bundle, paths, args.batch_size, args.workers))
            c_run, c_proc_run = bench(
                tmp / "in", ckpt, tmp / f"out{r}", args.batch_size, args.workers, len(paths), overrides
            )
            runs["c"].append(c_run)
            runs["c_proc"].append(c_proc_run)
            runs["c_onnx"].append(
                bench(
                    tmp / "in",
                    ckpt,
                    tmp / f"onnx{r}",
                    args.batch_size,
                    args.workers,
                    len(paths),
                    overrides,
                    backend="onnxruntime",
                )[0]
            )
            runs["d"].append(bench_per_file_monai(bundle, paths))
        a, b, c, c_steady, d = (max(runs[k]) for k in ("a", "b", "c", "c_proc", "d"))
        per_kind = {}
        for kind in sorted({p.parent.name for p in paths}):
            subset = [p for p in paths if p.parent.name == kind]
            per_kind[kind] = round(bench_loader(bundle, subset, args.batch_size, args.workers), 2)

    allowed_shared_cpu = 1 / (1 / a + 1 / b)
    best = {k: max(v) for k, v in runs.items()}
    int8_allowed = 1 / (1 / best["a_int8"] + 1 / b)
    result = {
        "model": model,
        "files": len(paths),
        "sizes": args.sizes,
        "encodings": ["uncompressed", "jpeg2000_lossless"],
        "image_size": list(bundle.image_size or ()),
        "batch_size": args.batch_size,
        "workers": args.workers,
        "threads": args.threads,
        "infer_threads": args.infer_threads,
        "overrides": overrides,
        "cpu_count": os.cpu_count(),
        "write_seconds": round(write_seconds, 1),
        "repeats": args.repeats,
        "all_runs_img_s": {k: [round(v, 2) for v in vals] for k, vals in runs.items()},
        "a_model_only_img_s": round(a, 2),
        "a_onnx_model_only_img_s": round(max(runs["a_onnx"]), 2),
        "onnx_export_max_abs_difference": onnx.max_abs_difference,
        "b_loader_img_s": round(b, 2),
        "b_loader_img_s_by_kind": per_kind,
        "c_cit_infer_img_s": round(c, 2),
        "c_onnx_cit_infer_img_s": round(max(runs["c_onnx"]), 2),
        "c_cit_infer_processing_phase_img_s": round(c_steady, 2),
        "d_per_file_monai_img_s": round(d, 2),
        "allowed_by_stages_shared_cpu_img_s": round(allowed_shared_cpu, 2),
        "allowed_by_stages_gpu_img_s": round(min(a, b), 2),
        "c_over_allowed_shared_cpu": round(c / allowed_shared_cpu, 3),
        "c_over_d": round(c / d, 2),
        "c_processing_phase_over_allowed_shared_cpu": round(c_steady / allowed_shared_cpu, 3),
        "targets": {"c_over_allowed_shared_cpu": 0.9, "c_over_d": 3.0},
        "meets_targets": {
            "c_over_allowed_shared_cpu": c / allowed_shared_cpu >= 0.9,
            "c_over_d": c / d >= 3.0,
        },
        "cpu": cpu_flags(),
        "cpu_has_native_bf16": bf16,
        "jpeg_files": args.jpeg,
        "best_img_s": {k: round(v, 2) for k, v in best.items()},
        "int8": {
            "model_only_over_onnx_fp32": round(best["a_int8"] / best["a_onnx"], 2),
            "jpeg_cit_infer_over_onnx_fp32": round(best["jpeg_c_int8"] / best["jpeg_c_onnx"], 2),
            "dicom_stage_bound_img_s": round(int8_allowed, 2),
            "dicom_cit_infer_over_stage_bound": round(best["c_int8"] / int8_allowed, 3),
            # the loading + predicting phase only: without loading the bundle, finding and checking the
            # inputs, and writing the results (fixed costs that larger folders spread thinner)
            "dicom_processing_phase_over_stage_bound": round(best["c_int8_proc"] / int8_allowed, 3),
            "targets": {
                "model_only_over_onnx_fp32": 2.0,
                "jpeg_cit_infer_over_onnx_fp32": 1.8,
                "dicom_cit_infer_over_stage_bound": 0.9,
            },
        },
        **({"bf16_model_only_over_fp32": round(best["a_bf16"] / a, 2)} if bf16 else {}),
        "note": "best of the repeats; c includes bundle loading and discovery; shared 2-core machine, "
        "read ratios more than values",
    }
    json.dump(result, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
