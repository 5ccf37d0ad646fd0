"""Random ARC-shaped batches in the loader's format, for smoke checks (verify, tests, benches)
that must not depend on a built dataset."""
from __future__ import annotations

import numpy as np
import torch

from dataset.grids import IGNORE_LABEL_ID, PAD_ID, encode_grid


def random_batch(batch_size: int, side: int, max_demos: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Each sample: a random-size query and 1..max_demos demos whose output is the input with a
    per-sample colour shift, so the demos really do carry the rule."""
    rng = np.random.default_rng(seed)
    S = side * side
    inputs = np.zeros((batch_size, S), np.int64)
    labels = np.zeros((batch_size, S), np.int64)
    demo_inputs = np.zeros((batch_size, max_demos, S), np.int64)
    demo_labels = np.zeros((batch_size, max_demos, S), np.int64)
    demo_mask = np.zeros((batch_size, max_demos), bool)
    for b in range(batch_size):
        shift = int(rng.integers(1, 10))
        pairs = []
        for _ in range(1 + int(rng.integers(1, max_demos + 1))):
            h, w = rng.integers(1, side, size=2)
            grid = rng.integers(0, 10, size=(h, w)).astype(np.uint8)
            pairs.append((grid, ((grid + shift) % 10).astype(np.uint8)))
        (q_in, q_out), demos = pairs[0], pairs[1:]
        inputs[b] = encode_grid(q_in, side)
        labels[b] = encode_grid(q_out, side)
        for d, (d_in, d_out) in enumerate(demos):
            demo_inputs[b, d] = encode_grid(d_in, side)
            demo_labels[b, d] = encode_grid(d_out, side)
            demo_mask[b, d] = True
    labels[labels == PAD_ID] = IGNORE_LABEL_ID
    return {
        "inputs": torch.from_numpy(inputs), "labels": torch.from_numpy(labels),
        "demo_inputs": torch.from_numpy(demo_inputs), "demo_labels": torch.from_numpy(demo_labels),
        "demo_mask": torch.from_numpy(demo_mask),
        "puzzle_identifiers": torch.arange(batch_size), "query_index": torch.arange(batch_size),
        "valid": torch.ones(batch_size, dtype=torch.bool),
    }
