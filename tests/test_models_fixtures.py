"""Small synthetic ARC-like batches for the model tests (no tests here)."""
from __future__ import annotations

import numpy as np
import torch

from dataset.grids import IGNORE_LABEL_ID, PAD_ID, encode_grid

torch.set_num_threads(2)

RULES = (
    lambda g: g,
    lambda g: g[:, ::-1],
    lambda g: g[::-1, :],
    lambda g: (g + 1) % 10,
)


def tiny_config(**kw) -> dict:
    cfg = dict(
        batch_size=4, seq_len=25, vocab_size=12, max_demos=3, puzzle_emb_len=4, hidden_size=32, num_heads=4,
        expansion=2.0, H_cycles=2, L_cycles=2, L_layers=1, halt_max_steps=4, halt_exploration_prob=0.0,
        encoder_num_layers=1, encoder_set_layers=1,
    )
    cfg.update(kw)
    return cfg


def make_batch(B: int = 4, D: int = 3, side: int = 5, seed: int = 0, n_demos: list[int] | None = None,
               rules: list[int] | None = None) -> dict[str, torch.Tensor]:
    """Each row: a puzzle with a rule from RULES, up to D demos (the rest masked, PAD), a query."""
    rng = np.random.default_rng(seed)
    S = side * side
    out = dict(
        inputs=np.zeros((B, S), np.int64), labels=np.zeros((B, S), np.int64),
        demo_inputs=np.zeros((B, D, S), np.int64), demo_labels=np.zeros((B, D, S), np.int64),
        demo_mask=np.zeros((B, D), bool),
    )
    for b in range(B):
        rule = RULES[(rules[b] if rules is not None else b) % len(RULES)]
        nd = n_demos[b] if n_demos is not None else int(rng.integers(1, D + 1))
        pairs = []
        for _ in range(nd + 1):
            h, w = rng.integers(2, side, size=2)
            g = rng.integers(0, 10, size=(h, w))
            pairs.append((g, np.ascontiguousarray(rule(g))))
        for d, (gi, go) in enumerate(pairs[:nd]):
            out["demo_inputs"][b, d] = encode_grid(gi, side)
            out["demo_labels"][b, d] = encode_grid(go, side)
            out["demo_mask"][b, d] = True
        qi, qo = pairs[-1]
        out["inputs"][b] = encode_grid(qi, side)
        lab = encode_grid(qo, side)
        out["labels"][b] = np.where(lab == PAD_ID, IGNORE_LABEL_ID, lab)
    batch = {k: torch.from_numpy(v) for k, v in out.items()}
    batch["variant_index"] = torch.arange(B)
    batch["query_index"] = torch.arange(B)
    batch["puzzle_index"] = torch.arange(B)
    batch["valid"] = torch.ones(B, dtype=torch.bool)
    return batch
