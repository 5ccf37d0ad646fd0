"""Helpers shared by several test modules (test modules import this, never each other):
the one compose helper, small synthetic batches and model configs, and the reference scorer."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

from dataset.tokens import IGNORE_LABEL_ID, PAD_ID
from dataset.grids import encode_grid
from training.config_schema import compose_config as compose_cfg  # noqa: F401 (the one compose helper)

REPO = Path(__file__).resolve().parents[1]

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


def small_encoder(kind, pooling="mean", side=5, seed=0):
    from models.encoders import build_encoder

    torch.manual_seed(seed)
    return build_encoder(kind, hidden_size=32, num_heads=4, seq_len=side * side, puzzle_emb_len=4,
                         num_layers=1, expansion=2.0, pooling=pooling, set_layers=1)


def demos_of(batch):
    return batch["demo_inputs"], batch["demo_labels"], batch["demo_mask"]


PADDING_SIDE = 12  # tests/test_padding.py's canvas


def ragged_batch(B: int = 3, D: int = 4, side: int = PADDING_SIDE, seed: int = 0) -> dict[str, torch.Tensor]:
    """Grids of many sizes (1x1 up to the full canvas, outputs larger than inputs), a ragged
    number of real demos per row (at least one)."""
    rng = np.random.default_rng(seed)
    S = side * side
    d_in = np.zeros((B, D, S), np.int64)
    d_out = np.zeros((B, D, S), np.int64)
    mask = np.zeros((B, D), bool)
    inputs = np.zeros((B, S), np.int64)
    labels = np.zeros((B, S), np.int64)
    for b in range(B):
        n = 1 + b % D
        for d in range(n):
            h, w = rng.integers(1, side + 1, 2)
            h2, w2 = (side, side) if (b, d) == (0, 0) else rng.integers(1, side + 1, 2)
            d_in[b, d] = encode_grid(rng.integers(0, 10, (h, w)), side)
            d_out[b, d] = encode_grid(rng.integers(0, 10, (h2, w2)), side)
            mask[b, d] = True
        inputs[b] = encode_grid(rng.integers(0, 10, (3, 4)), side)
        labels[b] = encode_grid(rng.integers(0, 10, (5, 2)), side)
    labels = np.where(labels == PAD_ID, IGNORE_LABEL_ID, labels)
    t = torch.from_numpy
    return dict(inputs=t(inputs), labels=t(labels), demo_inputs=t(d_in), demo_labels=t(d_out), demo_mask=t(mask),
                variant_index=torch.arange(B), query_index=torch.arange(B), valid=torch.ones(B, dtype=torch.bool))


def load_scorer():
    """scripts/score_submission.py as a module (the reference scorer)."""
    spec = importlib.util.spec_from_file_location("score_submission", REPO / "scripts" / "score_submission.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
