"""Training throughput: the ResNet-18 bundle (MONAI engines) against a bare PyTorch loop.

Both run in this process on the same synthetic images, network, batch size, input size and
augmentation. The bundle reads its training set through CacheDataset (the deterministic part of
the chain runs once); the bare loop starts from those same preprocessed tensors in memory and
applies the same random augmentation per epoch. Runs alternate (bundle, bare, bundle, bare, ...)
and the first epoch of every run is a warm-up that is not timed. Prints one JSON object.

    python scripts/bench_train.py [--images 96] [--image-size 224] [--epochs 3] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path

import torch
from ignite.engine import Events
from monai.bundle import ConfigWorkflow
from monai.data import list_data_collate
from monai.transforms import Compose, Randomizable
from monai.utils import set_determinism

from toolkit.bundle.configs import bundle_parser
from toolkit.data import load_datalist, make_synthetic_dataset
from toolkit.engines import dataset_items, prepare_batch_for, prepare_network
from toolkit.networks import create_network

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "bundles" / "resnet18_brain_ct" / "configs" / "train.json"


def bundle_rates(datalist: Path, work: Path, args) -> tuple[list[float], int]:
    """Images per second of each timed epoch of the bundle's trainer, and images per epoch."""
    workflow = ConfigWorkflow(
        config_file=str(CONFIG),
        workflow_type="train",
        logging_file=False,
        dataset_dir=str(datalist),
        ckpt_dir=str(work / "models"),
        output_dir=str(work / "output"),
        image_size=args.image_size,
        batch_size=args.batch_size,
        max_epochs=args.epochs,
        pretrained=None,
    )
    workflow.initialize()
    trainer = workflow.parser.get_parsed_content("train#trainer")
    rates, start, seen = [], {}, {}

    def _start(engine):
        start["t"], seen["n"] = time.perf_counter(), 0

    def _count(engine):  # the clock stops at the last training iteration: the epoch's validation is not timed
        seen["n"] += len(engine.state.batch["image"])
        start["last"] = time.perf_counter()

    trainer.add_event_handler(Events.EPOCH_STARTED, _start)
    trainer.add_event_handler(Events.ITERATION_COMPLETED, _count)
    trainer.add_event_handler(
        Events.EPOCH_COMPLETED, lambda e: rates.append(seen["n"] / (start["last"] - start["t"]))
    )
    workflow.run()
    return rates[1:], seen["n"]


def bare_rates(datalist: Path, args) -> tuple[list[float], int]:
    """The same work with no engine: cached tensors, the chain's random part, forward/backward/step.

    Like the bundle's loader, a last partial batch is dropped (BatchNorm cannot train on one image)."""
    items = dataset_items(load_datalist(datalist), "training")
    # the bundle's own training chain (loading, augmentation, normalisation), built as its training builds it
    chain = bundle_parser(CONFIG.parents[1], image_size=args.image_size).get_parsed_content(
        "train_transforms"
    )
    first_random = next(i for i, t in enumerate(chain.transforms) if isinstance(t, Randomizable))
    prepare, augment = Compose(chain.transforms[:first_random]), Compose(chain.transforms[first_random:])
    cached = [prepare(item) for item in items]  # deterministic part, once, in memory
    network = prepare_network(create_network("resnet18", num_classes=3, pretrained=None), "cpu")
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-4)
    loss_fn = torch.nn.CrossEntropyLoss()
    prepare_batch = prepare_batch_for(network)
    rates, per_epoch = [], len(cached) // args.batch_size * args.batch_size
    for _ in range(args.epochs):
        t0 = time.perf_counter()
        network.train()
        order = torch.randperm(len(cached)).tolist()
        for s in range(0, per_epoch, args.batch_size):
            batch = list_data_collate([augment(dict(cached[i])) for i in order[s : s + args.batch_size]])
            images, labels = prepare_batch(batch, "cpu")
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(network(images), labels)
            loss.backward()
            optimizer.step()
        rates.append(per_epoch / (time.perf_counter() - t0))
    return rates[1:], per_epoch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--images", type=int, default=96, help="training images (about 80%% of the synthetic set)"
    )
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=3, help="per run; the first is an untimed warm-up")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    if args.images < args.batch_size:  # the bare loop drops the last partial batch: no batch at all
        parser.error(f"--images ({args.images}) must be at least --batch-size ({args.batch_size})")
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: the first epoch is an untimed warm-up")
    logging.disable(logging.INFO)  # keep stdout to the JSON result

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        n_patients = max(3, round(args.images / 0.8 / 4))
        datalist = make_synthetic_dataset(
            tmp / "data", n_patients=n_patients, images_per_patient=4, image_size=256
        )
        bundle, bare = [], []
        for round_ in range(args.rounds):
            set_determinism(seed=round_)
            rates, n = bundle_rates(datalist, tmp / f"run{round_}", args)
            bundle += rates
            set_determinism(seed=round_)
            rates, n_bare = bare_rates(datalist, args)
            bare += rates
        set_determinism(seed=None)
    result = {
        "benchmark": "bundle training vs bare PyTorch loop",
        "network": "resnet18",
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "images_per_epoch": {"bundle": n, "bare_loop": n_bare},
        "timed_epochs_per_run": args.epochs - 1,
        "rounds": args.rounds,
        "torch_threads": torch.get_num_threads(),
        "device": "cpu",
        "bundle_images_per_s": round(statistics.median(bundle), 2),
        "bare_loop_images_per_s": round(statistics.median(bare), 2),
        "ratio": round(statistics.median(bundle) / statistics.median(bare), 3),
        "target_ratio": 0.95,
        "bundle_epoch_rates": [round(r, 2) for r in bundle],
        "bare_epoch_rates": [round(r, 2) for r in bare],
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
