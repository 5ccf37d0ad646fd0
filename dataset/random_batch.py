"""Batches in the loader's format built straight from grids, for smoke checks and benches that
must not depend on a built dataset: `batch_from_pairs` (given grids) and `random_batch`."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from dataset.grids import IGNORE_LABEL_ID, PAD_ID, encode_grid

Pair = tuple[np.ndarray, np.ndarray]


def batch_from_pairs(samples: Sequence[tuple[Pair, Sequence[Pair]]], side: int, max_demos: int) -> dict[str, torch.Tensor]:
    """samples: (query pair, demo pairs) per row; demos beyond max_demos are dropped."""
    B, S = len(samples), side * side
    inputs = np.zeros((B, S), np.int64)
    labels = np.zeros((B, S), np.int64)
    demo_inputs = np.zeros((B, max_demos, S), np.int64)
    demo_labels = np.zeros((B, max_demos, S), np.int64)
    demo_mask = np.zeros((B, max_demos), bool)
    for b, ((q_in, q_out), demos) in enumerate(samples):
        inputs[b] = encode_grid(np.asarray(q_in), side)
        labels[b] = encode_grid(np.asarray(q_out), side)
        for d, (d_in, d_out) in enumerate(list(demos)[:max_demos]):
            demo_inputs[b, d] = encode_grid(np.asarray(d_in), side)
            demo_labels[b, d] = encode_grid(np.asarray(d_out), side)
            demo_mask[b, d] = True
    labels[labels == PAD_ID] = IGNORE_LABEL_ID
    return {
        "inputs": torch.from_numpy(inputs), "labels": torch.from_numpy(labels),
        "demo_inputs": torch.from_numpy(demo_inputs), "demo_labels": torch.from_numpy(demo_labels),
        "demo_mask": torch.from_numpy(demo_mask),
        "variant_index": torch.arange(B), "query_index": torch.arange(B),
        "puzzle_index": torch.arange(B), "valid": torch.ones(B, dtype=torch.bool),
    }


def random_batch(batch_size: int, side: int, max_demos: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Each sample: a random-size query and 1..max_demos demos whose output is the input with a
    per-sample colour shift, so the demos really do carry the rule."""
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(batch_size):
        shift = int(rng.integers(1, 10))
        pairs = []
        for _ in range(1 + int(rng.integers(1, max_demos + 1))):
            h, w = rng.integers(1, side, size=2)
            grid = rng.integers(0, 10, size=(h, w)).astype(np.uint8)
            pairs.append((grid, ((grid + shift) % 10).astype(np.uint8)))
        samples.append((pairs[0], pairs[1:]))
    return batch_from_pairs(samples, side, max_demos)
