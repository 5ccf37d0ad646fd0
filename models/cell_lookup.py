"""`arch.cell_lookup`: every query cell reads what the demo cells that look like it became.

A cell's description is its colour and its grid features (models/grid_features.py: the region and
object it is part of, where in them, what it sees in each direction, its neighbours), embedded by
tables of this module. Every cell of a demo input whose output has the same shape is a key (its
description) with a value: "unchanged", or "became colour c". Each query cell attends over the
keys of all its puzzle's demos with its own description as the query, and the weighted values,
through an output projection that starts at zero, are added to the cell's input embedding: the
inner model gets "what cells like me became in the demos" before its first block, and may use it
or not.

Why it is generic: many ARC rules recolour each cell by what it is (its object's size, whether it
is enclosed, how many neighbours it has, what it sees along a row), and the demos show the answer
for cells of every kind; no rule is written down here, only "cells that look alike map alike",
with the learned query/key projections deciding which parts of the description count. At step 0
the projections compare descriptions as they are (identity), so the read starts as a nearest-
neighbour vote over the demo cells; training reweights it. Rules that move cells (gravity) or
change the size get nothing from it (their pairs are not aligned or the change is not per-cell).

Cost: one attention of the S query cells over the D x S demo cells per ACT step (not per block),
and the grid features of every demo input; F.scaled_dot_product_attention keeps memory linear.
"""
from __future__ import annotations

import torch
from torch import nn

from dataset.tokens import COLOUR_OFFSET, NUM_COLOURS
from models.grid_features import GridFeatureEmbedding, grid_features
from models.layers import Embedding, Linear, attend, rms_norm

UNCHANGED = 0  # value index; 1 + c: the cell became colour c


class CellLookup(nn.Module):
    """(query tokens [B, S], demo inputs / labels [B, D, S], demo mask [B, D]) -> [B, S, H], zero at init."""

    def __init__(self, hidden_size: int, num_heads: int, vocab_size: int, side: int, sharpness: float = 2.0):
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"cell_lookup: hidden_size {hidden_size} not divisible by num_heads {num_heads}")
        H = hidden_size
        self.side, self.num_heads = side, num_heads
        self.colour = Embedding(vocab_size, H, init_std=1.0)
        self.features = GridFeatureEmbedding(H, init_std=1.0)   # random: different descriptions differ at step 0
        self.change = Embedding(1 + NUM_COLOURS, H, init_std=1.0)
        # identity projections: at step 0 the score is the descriptions' similarity (sharpened)
        self.q_proj = Linear(H, H)
        self.k_proj = Linear(H, H)
        with torch.no_grad():
            self.q_proj.weight.copy_(sharpness * torch.eye(H))
            self.k_proj.weight.copy_(torch.eye(H))
        self.o_proj = Linear(H, H, init_std=0.0)

    def describe(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [N, S] -> descriptions [N, S, H] (unit RMS)."""
        return rms_norm(self.colour(tokens) + self.features(grid_features(tokens, self.side)))

    def _heads(self, t: torch.Tensor) -> torch.Tensor:  # [B, L, H] -> [B, heads, L, head_dim]
        B, L, H = t.shape
        return t.view(B, L, self.num_heads, H // self.num_heads).transpose(1, 2)

    def forward(self, inputs: torch.Tensor, demo_inputs: torch.Tensor, demo_labels: torch.Tensor,
                demo_mask: torch.Tensor) -> torch.Tensor:
        B, D, S = demo_inputs.shape
        d_in, d_out = demo_inputs.reshape(B * D, S), demo_labels.reshape(B * D, S)
        in_cell, out_cell = d_in >= COLOUR_OFFSET, d_out >= COLOUR_OFFSET
        # a pair's cells are aligned when its output has the input's shape (both at the canvas' top-left)
        aligned = (in_cell == out_cell).all(-1, keepdim=True) & demo_mask.reshape(B * D, 1)
        key_mask = (in_cell & aligned).view(B, D * S)
        change = torch.where(d_out == d_in, UNCHANGED, 1 + (d_out - COLOUR_OFFSET).clamp(0, NUM_COLOURS - 1))
        k = self.k_proj(self.describe(d_in)).view(B, D * S, -1)
        v = self.change(change).view(B, D * S, -1)
        q = self.q_proj(self.describe(inputs))
        read = attend(self._heads(q), self._heads(k), self._heads(v), key_mask)   # [B, S, H]
        # no aligned demo cell (every pair changes the size), or not a grid cell: nothing to add
        use = key_mask.any(-1, keepdim=True) & (inputs >= COLOUR_OFFSET)
        return self.o_proj(read) * use.unsqueeze(-1).to(read.dtype)
