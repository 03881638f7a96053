"""Samplers and main-process helpers follow the process group (one process, or torchrun's DDP)."""

import socket
from collections import Counter

import pytest
import torch
import torch.distributed as dist
from monai.data import DistributedSampler, DistributedWeightedRandomSampler
from torch.utils.data import WeightedRandomSampler

from toolkit.engines import eval_sampler, main_process_handlers, on_main_process, process_rank, train_sampler

ITEMS = [{"image": f"{i}.png", "label": 0} for i in range(30)] + [
    {"image": f"m{i}.png", "label": 1} for i in range(6)
]


def test_one_process_samplers():
    assert train_sampler(ITEMS, None, 2) is None
    assert isinstance(train_sampler(ITEMS, ITEMS, 2), WeightedRandomSampler)
    assert eval_sampler(ITEMS) is None
    assert process_rank() == 0 and on_main_process(lambda: "ran") == "ran"
    assert main_process_handlers(["a", 1], keep=(int,)) == ["a", 1]


@pytest.fixture
def process_group():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_weighted_sampler_stays_weighted_under_ddp(process_group):
    sampler = train_sampler(ITEMS, ITEMS, 2, seed=3)
    assert isinstance(sampler, DistributedWeightedRandomSampler)
    draws = Counter(ITEMS[i]["label"] for _ in range(20) for i in sampler)
    assert 0.4 < draws[1] / sum(draws.values()) < 0.6, draws  # 1 in 6 items, drawn about half the time
    assert isinstance(train_sampler(ITEMS, None, 2), DistributedSampler)


def test_evaluation_sampler_pads_nothing_under_ddp(process_group):
    sampler = eval_sampler(list(range(7)))
    assert isinstance(sampler, DistributedSampler) and list(sampler) == list(range(7))
    two_ranks = [
        list(DistributedSampler(list(range(7)), shuffle=False, even_divisible=False, num_replicas=2, rank=r))
        for r in (0, 1)
    ]
    assert sorted(two_ranks[0] + two_ranks[1]) == list(range(7))
    assert torch.distributed.get_world_size() == 1
