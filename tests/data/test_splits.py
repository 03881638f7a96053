"""Patient-grouped stratified splits, leakage checks and class-balance helpers."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from toolkit.data.splits import (
    check_no_leakage,
    class_counts,
    class_weights,
    parse_ratios,
    split_items,
    weighted_sampler,
)

item_lists = st.lists(
    st.tuples(st.integers(0, 15), st.integers(0, 2), st.booleans()), min_size=1, max_size=80
).map(
    lambda rows: [
        {"image": f"/x/{n}.png", "label": label, **({"patient_id": f"p{pid}"} if has_pid else {})}
        for n, (pid, label, has_pid) in enumerate(rows)
    ]
)
ratio_choices = st.sampled_from(
    [
        None,
        "training=85,validation=15",
        "train=0.9,test=0.1",
        "70/20/10",
        "70:15:15",
        {"training": 0.6, "validation": 0.2, "test": 0.1, "extra": 0.1},
    ]
)


@settings(max_examples=60, deadline=None)
@given(items=item_lists, ratios=ratio_choices, seed=st.integers(0, 2**16))
def test_split_items_properties(items, ratios, seed):
    splits = split_items(items, ratios, seed=seed)
    assert list(splits) == list(parse_ratios(ratios))
    check_no_leakage(splits)  # no patient in two splits
    placed = [id(i) for part in splits.values() for i in part]
    assert sorted(placed) == sorted(id(i) for i in items)  # every item exactly once
    again = split_items(items, ratios, seed=seed)
    assert {k: [i["image"] for i in v] for k, v in again.items()} == {
        k: [i["image"] for i in v] for k, v in splits.items()
    }


def test_stratification_keeps_class_proportions():
    items = []
    for p in range(600):
        label = 0 if p < 400 else (1 if p < 540 else 2)  # 400 / 140 / 60 patients
        items += [{"image": f"{p}_{k}", "label": label, "patient_id": f"p{p}"} for k in range(1 + p % 3)]
    splits = split_items(items, {"training": 0.7, "validation": 0.15, "test": 0.15}, seed=5)
    totals = class_counts(items, 3)
    for name, fraction in (("training", 0.7), ("validation", 0.15), ("test", 0.15)):
        counts = class_counts(splits[name], 3)
        for c in range(3):
            assert abs(counts[c] / totals[c] - fraction) < 0.03, (name, c, counts, totals)
    assert split_items(items, "70:15:15", seed=6) != splits  # the seed matters


def test_multi_label_stratifies_by_rarest_label():
    items = [{"image": str(i), "label": [1, int(i % 10 == 0)], "patient_id": str(i)} for i in range(200)]
    splits = split_items(items, "training=0.5,validation=0.5", seed=0)
    assert [class_counts(splits[k], 2, multi_label=True)[1] for k in ("training", "validation")] == [10, 10]


def test_small_sets_fill_every_split():
    items = [{"image": str(i), "label": i % 3, "patient_id": f"p{i}"} for i in range(6)]
    splits = split_items(items, None)
    assert all(splits[k] for k in ("training", "validation", "test"))


def test_check_no_leakage_names_ids_and_splits():
    splits = {"training": [{"patient_id": "p1"}, {"patient_id": "p2"}], "test": [{"patient_id": "p1"}, {}]}
    with pytest.raises(ValueError, match="p1 in test/training"):
        check_no_leakage(splits)
    check_no_leakage({"training": [{"patient_id": "p1"}], "test": [{"patient_id": "p2"}]})


def test_parse_ratios():
    named = parse_ratios("training=0.7,validation=0.15,test=0.15")  # the documented form
    assert named == pytest.approx({"training": 0.7, "validation": 0.15, "test": 0.15})
    assert parse_ratios("70:15:15") == pytest.approx(named) and parse_ratios([70, 15, 15]) == pytest.approx(
        named
    )
    assert parse_ratios(" Train = 8 ; test=2 ") == pytest.approx({"training": 0.8, "test": 0.2})
    assert parse_ratios({"training": 0.8, "validation": 0.1, "test": 0.1}) == pytest.approx(
        {"training": 0.8, "validation": 0.1, "test": 0.1}
    )  # the dict form bundles use
    assert parse_ratios({"keep": 1, "drop": 3}) == pytest.approx({"keep": 0.25, "drop": 0.75})
    # unnamed parts must be all three: "70:30" does not say whether 30 is validation or test
    with pytest.raises(ValueError, match=r"ratios '70:30': unnamed ratios need all three parts.*got 2"):
        parse_ratios("70:30")
    with pytest.raises(ValueError, match="unnamed ratios need all three parts"):
        parse_ratios("1:1:1:1")
    with pytest.raises(ValueError, match=r"ratios 'training=0.8,test=x': 'x' is not a number"):
        parse_ratios("training=0.8,test=x")
    with pytest.raises(ValueError, match="training is given twice"):
        parse_ratios("train=0.5,training=0.5")


def test_class_weights_and_counts():
    items = [{"label": 0}] * 6 + [{"label": 1}] * 2 + [{"label": 2}] * 4
    assert class_counts(items, 3) == [6, 2, 4]
    w = class_weights(items, 3)
    assert sum(w) / 3 == pytest.approx(1.0)
    assert w[1] / w[0] == pytest.approx(3.0) and w[2] / w[0] == pytest.approx(1.5)
    multi = [{"label": [1, 0]}, {"label": [1, 1]}, {"label": [0, 0]}, {"label": [1, 0]}]
    assert class_weights(multi, 2, multi_label=True) == pytest.approx([1 / 3, 3.0])
    with pytest.raises(ValueError, match="outside"):
        class_counts([{"label": 5, "image": "z.png"}], 3)


def test_weighted_sampler_balances_and_is_seeded():
    items = [{"label": 0}] * 90 + [{"label": 1}] * 10
    drawn = [list(weighted_sampler(items, 2, seed=1)) for _ in range(2)]
    assert drawn[0] == drawn[1]
    assert drawn[0] != list(weighted_sampler(items, 2, seed=2))
    many = torch.tensor([i for seed in range(20) for i in weighted_sampler(items, 2, seed=seed)])
    minority = (many >= 90).float().mean().item()
    assert 0.4 < minority < 0.6
    assert Counter(drawn[0]).most_common(1)[0][1] > 1  # with replacement
