"""The validation split: deterministic by seed, disjoint, order kept, sizes as asked."""

from __future__ import annotations

import pytest
import torch

from bayescale.data.datasets import Dataset
from bayescale.data.split import validation_split


def _ds(n=100):
    return Dataset(torch.arange(n, dtype=torch.float32).view(n, 1), torch.arange(n) % 10,
                   "toy/train", 10)


def test_split_is_a_partition_in_order_and_deterministic():
    ds = _ds()
    train, val = validation_split(ds, 20, seed=3)
    assert (len(train), len(val)) == (80, 20)
    ids_t, ids_v = train.x.squeeze(1).long(), val.x.squeeze(1).long()
    assert sorted(ids_t.tolist() + ids_v.tolist()) == list(range(100))
    assert torch.all(ids_t.diff() > 0) and torch.all(ids_v.diff() > 0)  # original order
    torch.testing.assert_close(train.y, ds.y[ids_t])
    again = validation_split(ds, 20, seed=3)[1]
    torch.testing.assert_close(again.x, val.x)
    other = validation_split(ds, 20, seed=4)[1]
    assert not torch.equal(other.x, val.x)
    assert (train.name, val.name) == ("toy/train", "toy/validation")


def test_fraction_and_bad_sizes():
    assert len(validation_split(_ds(), 0.25)[1]) == 25
    for bad in (0, 100, 1.0, True):
        with pytest.raises(ValueError):
            validation_split(_ds(), bad)
