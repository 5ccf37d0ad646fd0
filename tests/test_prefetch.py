"""dataset/prefetch.py: the same batches as the loader, assembled on a worker thread, with a
resumable state that describes the consumed batches, not the prefetched ones."""
from __future__ import annotations

import time

import pytest
import torch

from dataset.loader import TrainLoader, load_split
from dataset.prefetch import Prefetcher


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_same_batches_and_a_state_of_the_consumed_ones(tiny_data):
    split = load_split(str(tiny_data), "train")
    reference = TrainLoader(split, 8, seed=5)
    expected = [next(reference) for _ in range(12)]
    prefetch = Prefetcher(TrainLoader(split, 8, seed=5), depth=3)
    for k in range(5):
        assert same(next(prefetch), expected[k])
    time.sleep(0.2)  # let the worker run ahead
    state = prefetch.state_dict()
    resumed = TrainLoader(split, 8, seed=5)
    resumed.load_state_dict(state)
    assert same(next(resumed), expected[5])  # the first batch the caller has not consumed
    prefetch.load_state_dict(state)
    assert [same(next(prefetch), expected[k]) for k in range(5, 12)] == [True] * 7
    assert prefetch.local_batch_size == 8
    prefetch.close()


def test_a_worker_error_reaches_the_caller():
    class Broken:
        def state_dict(self):
            return {}

        def __next__(self):
            raise ValueError("bad batch 7")

    with pytest.raises(ValueError, match="bad batch 7"):
        next(Prefetcher(Broken()))
