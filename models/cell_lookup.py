"""`arch.cell_lookup`: every query cell reads what the demo cells that look like it became.

A cell's description is its colour and its grid features (models/grid_features.py: the region and
object it is part of, where in them, what it sees in each direction, its neighbours; not where the
cell is on the canvas, so that cells are matched by what they are, wherever they are), embedded by
tables of this module. Every cell of a demo input whose output has the same shape is a key (its
description) with a value: "unchanged", or "became colour c". Each query cell attends over the
keys of all its puzzle's demos with its own description as the query. What it reads goes two ways:
- into the cell's input embedding, through an output projection that starts at zero: the inner
  model gets "what cells like me became in the demos" before its first block, and may use it or not;
- straight to the answer: the read, as a distribution over "unchanged" (= the cell's own colour) and
  the 10 colours, is added to the output logits as gain x log(p) (the gain starts at zero), a copy
  path like a pointer network's: the vote is usable from the first steps, before the recursion has
  learned to decode the embedding, and its gradient trains the query/key projections directly.

Why it is generic: many ARC rules recolour each cell by what it is (its object's size, whether it
is enclosed, how many neighbours it has, what it sees along a row), and the demos show the answer
for cells of every kind; no rule is written down here, only "cells that look alike map alike",
with the learned query/key projections deciding which parts of the description count. At step 0
the projections compare descriptions as they are (identity), so the read starts as a nearest-
neighbour vote over the demo cells; training reweights it. With a cover of cell maps (`arch.
cell_lookup_map`: models/grid_maps.py map_cover, the flip / rotation / shift / tiling that with a
colour relabelling explains the demos) every grid is read through the maps first, so a cell "moved
by the map, then changed by what it is" is read like a change in place. With `arch.
cell_lookup_select` (models/feature_select.py) cells are compared only by the grid features the
puzzle's demo changes follow (chosen per puzzle, leave-one-demo-out), and with `arch.
cell_lookup_table` that feature's demo table "(colour, value) -> change" votes on the answer
too. With `arch.cell_lookup_frame` / `arch.cell_lookup_box` the cover may also read the input into
the answer's frame (tiled, stretched) or read one box of it as the grid (the content's, turned; one
colour's; an object's chosen by its size). Rules that move cells by their content (gravity) or change
the size otherwise get nothing from it (their pairs are not aligned, or the change is not per cell).

Cost: one attention of the S query cells over the D x S demo cells per ACT step (not per block),
at the lookup's own width (LOOKUP_WIDTH, whatever the model's: a description needs no more), and the
grid features of every demo input; F.scaled_dot_product_attention keeps memory linear on a GPU.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dataset.tokens import COLOUR_OFFSET, NUM_COLOURS, PAD_ID
from models.grid_features import FEATURE_INDEX, GridFeatureEmbedding, grid_features
from models.feature_select import IS_ORDINAL, RELATIVE, feature_scores, feature_weights, table_vote
from models.grid_maps import grid_sizes, read_through
from models.layers import Embedding, Linear, attend, rms_norm

UNCHANGED = 0  # value index; 1 + c: the cell became colour c
LOOKUP_WIDTH, LOOKUP_HEADS = 64, 4   # the descriptions' width and the read's heads (the tiny model's)
VOTE_FLOOR = 1e-3   # log(p + floor): a colour no similar demo cell became is unlikely, not impossible
GAIN_SCALE = 10.0   # the vote gain is GAIN_SCALE x a parameter: a scalar under Adam moves ~lr per step
# where the cell is on the canvas: left out of the description (ARC rules are mostly translation-
# invariant; the border is in the region kind and the rays' distances). At init, without them the
# vote of the 12 content families' held-out puzzles gets 0.70 instead of 0.63 of crowd's changed
# cells right, 0.81 instead of 0.72 of size_recolour's (/ sharpness 2 -> 8: 0.48 -> 0.63, 0.34 -> 0.72).
CANVAS_POSITION = [FEATURE_INDEX[n] for n in ("row", "col", "row_from_bottom", "col_from_right")]
# the cell's colour in the description, at init, at this share of the features' sum (RMS sqrt(H)): at
# 1/8 (the tables' plain init) the init vote got 0.47 of colour_map's changed cells right and 0.05 of
# swap's, at 1/2 0.95 and 0.67 with the content families' as before (crowd 0.55 -> 0.60, size_recolour
# 0.80 -> 0.82), at 1 1.00 / 1.00 but enclose 0.77 -> 0.48 (all 18 families' held-out puzzles, seed 0;
# python -m bench.lookup_vote <data>/puzzles/eval --colour-share S, docs/BENCHMARKS.md)
COLOUR_SHARE = 0.5
OTHER_WEIGHT = 0.0   # cell_lookup_select: the weight of the features the demos' changes do not follow


class CellLookup(nn.Module):
    """(query tokens [B, S], demo inputs / labels [B, D, S], demo mask [B, D]) ->
    (input embedding term [B, S, H], output logit term [B, S, vocab]), both zero at init."""

    def __init__(self, hidden_size: int, vocab_size: int, side: int, sharpness: float = 8.0,
                 width: int = LOOKUP_WIDTH, num_heads: int = LOOKUP_HEADS, colour_share: float = COLOUR_SHARE,
                 select_features: bool = False, other_weight: float = OTHER_WEIGHT, table_vote: bool = False,
                 regions: bool = False):
        super().__init__()
        # select_features (arch.cell_lookup_select): per puzzle, the features that predict the demos'
        # changes keep weight 1 in the descriptions, the others `other_weight` (models/feature_select.py);
        # table_vote (arch.cell_lookup_table, needs it): the demos' table for the best feature votes too
        if table_vote and not select_features:
            raise ValueError("cell_lookup: table_vote needs select_features (the table is the selection's)")
        self.select_features, self.other_weight, self.use_table = select_features, other_weight, table_vote
        self.regions = regions   # arch.cell_lookup_box: covers may hold region maps (models/grid_maps.py)
        if width % num_heads:
            raise ValueError(f"cell_lookup: width {width} not divisible by num_heads {num_heads}")
        if vocab_size < COLOUR_OFFSET + NUM_COLOURS:
            raise ValueError(f"cell_lookup: vocab_size {vocab_size} has no room for the {NUM_COLOURS} colours")
        W = width
        self.side, self.num_heads, self.vocab_size = side, num_heads, vocab_size
        self.colour = Embedding(vocab_size, W, init_std=colour_share * W ** 0.5)
        self.features = GridFeatureEmbedding(W, init_std=1.0)   # random: different descriptions differ at step 0
        self.change = Embedding(1 + NUM_COLOURS, W, init_std=1.0)
        # identity projections: at step 0 the score is the descriptions' similarity (sharpened)
        self.q_proj = Linear(W, W)
        self.k_proj = Linear(W, W)
        with torch.no_grad():
            self.q_proj.weight.copy_(sharpness * torch.eye(W))
            self.k_proj.weight.copy_(torch.eye(W))
        self.o_proj = Linear(W, hidden_size, init_std=0.0)
        self.head_logits = nn.Parameter(torch.zeros(num_heads))   # how the heads' votes mix (uniform at init)
        self.vote_gain = nn.Parameter(torch.zeros(()))
        if table_vote:
            self.table_gain = nn.Parameter(torch.zeros(()))   # the table's vote: zero at init, like the lookup's

    def cell_features(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [N, S] -> grid feature ids [N, S, F], the canvas position left out."""
        feats = grid_features(tokens, self.side)
        feats[..., CANVAS_POSITION] = 0   # "not a grid cell": one constant for every cell
        return feats

    def describe(self, tokens: torch.Tensor, feats: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """tokens [N, S], feature ids [N, S, F], per-grid feature weights [N, 1, F] or None (all 1)
        -> descriptions [N, S, H] (unit RMS)."""
        return rms_norm(self.colour(tokens) + self.features(feats, weights))

    def _heads(self, t: torch.Tensor) -> torch.Tensor:  # [B, L, H] -> [B, heads, L, head_dim]
        B, L, H = t.shape
        return t.view(B, L, self.num_heads, H // self.num_heads).transpose(1, 2)

    def forward(self, inputs: torch.Tensor, demo_inputs: torch.Tensor, demo_labels: torch.Tensor,
                demo_mask: torch.Tensor, cover: tuple[torch.Tensor, torch.Tensor] | None = None,
                frame: torch.Tensor | None = None, boxes: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """cover: (maps [B, K], used [B, K]) from models/grid_maps.py `map_cover`: the cell maps that,
        with one colour relabelling, explain the demos; every grid, the demos' inputs and the query,
        is read through them first (cell q of the answer is the cell its map points at), so
        "unchanged" means "as the maps carry it" and a flip, a rotation, a shift or a tiling
        followed by a per-cell change is read like a change in place. None: the identity.
        frame [B, 2]: the query answer's size (models/answer_size.py; 0 x 0 = not known), which a
        cover's frame maps read the query into (a demo's frame is its output's size).
        boxes: the region boxes of the demo inputs, then the queries [B * D + B, NUM_REGION_KINDS, 4]
        (models/answer_size.py computes them with its labelling; None: computed where needed)."""
        B, D, S = demo_inputs.shape
        d_in, d_out = demo_inputs.reshape(B * D, S), demo_labels.reshape(B * D, S)
        k_feats, q_feats = self.cell_features(torch.cat([d_in, inputs])).split([B * D, B])  # one call: one labelling
        shape = d_in >= COLOUR_OFFSET   # the cells of the answer, as the maps carry the input
        if cover is not None:
            maps, used = cover
            demo_frame = torch.stack(grid_sizes(d_out, self.side), -1)
            d_boxes, q_boxes = (None, None) if boxes is None else boxes.split([B * D, B])
            d_in, k_feats, shape = self._through_map(d_in, k_feats, maps.repeat_interleave(D, 0),
                                                     used.repeat_interleave(D, 0), demo_frame, d_boxes)
            inputs, q_feats, _ = self._through_map(inputs, q_feats, maps, used, frame, q_boxes)
        in_cell, out_cell = d_in >= COLOUR_OFFSET, d_out >= COLOUR_OFFSET
        # a pair's cells are aligned when its output has the shape of its (carried) input; cells a
        # shift leaves with no source are in the shape but are no keys (and get no vote)
        aligned = (shape == out_cell).all(-1, keepdim=True) & demo_mask.reshape(B * D, 1)
        key_mask = (in_cell & aligned).view(B, D * S)
        change = torch.where(d_out == d_in, UNCHANGED, 1 + (d_out - COLOUR_OFFSET).clamp(0, NUM_COLOURS - 1))
        k_weights = q_weights = None
        if self.select_features:   # the features the demos' changes follow weigh most (no gradient)
            scores, demo_table = feature_scores((d_in - COLOUR_OFFSET).view(B, D, S), k_feats.view(B, D, S, -1),
                                                change.view(B, D, S), key_mask.view(B, D, S), RELATIVE)
            q_weights = feature_weights(scores, self.other_weight, RELATIVE)[:, None]  # [B, 1, F]
            k_weights = q_weights.repeat_interleave(D, 0)
        k = self.k_proj(self.describe(d_in, k_feats, k_weights)).view(B, D * S, -1)
        q = self.q_proj(self.describe(inputs, q_feats, q_weights))
        onehot = F.one_hot(change.view(B, 1, D * S), 1 + NUM_COLOURS).to(q.dtype)      # [B, 1, DS, 11]
        # values padded to the keys' head size: fused SDPA kernels want equal head sizes (else the
        # math kernel materialises [B, heads, S, D x S] scores)
        head_dim = q.shape[-1] // self.num_heads
        onehot = F.pad(onehot, (0, max(0, head_dim - onehot.shape[-1]))).expand(-1, self.num_heads, -1, -1)
        # per head, the share of similar demo cells with each change: [B, heads, S, 11]
        votes = attend(self._heads(q), self._heads(k), onehot, key_mask).view(B, S, self.num_heads, -1)
        votes = votes[..., :1 + NUM_COLOURS]
        # no aligned demo cell (every pair changes the size), or not a grid cell: nothing to add
        use = (key_mask.any(-1, keepdim=True) & (inputs >= COLOUR_OFFSET)).unsqueeze(-1).to(q.dtype)
        # 1. the embedding path: the votes through the change table (per head: its slice) and o_proj
        table = self.change.weight.view(1 + NUM_COLOURS, self.num_heads, -1)           # [11, heads, W / heads]
        read = torch.einsum("bshc,chd->bshd", votes, table).reshape(B, S, -1)
        embedding = self.o_proj(read) * use
        # 2. the answer path: "unchanged" votes for the cell's own colour
        p = torch.einsum("bshc,h->bsc", votes, self.head_logits.softmax(0))            # [B, S, 11]
        own = F.one_hot((inputs - COLOUR_OFFSET).clamp(0, NUM_COLOURS - 1), NUM_COLOURS).to(p.dtype)
        as_logits = lambda p: torch.log(p[..., 1:] + p[..., :1] * own + VOTE_FLOOR)  # noqa: E731  [B, S, 10]
        bias = GAIN_SCALE * self.vote_gain * as_logits(p) * use
        if self.use_table:    # 3. the demos' table for the best feature, applied to the query (no gradient)
            p_table, seen = table_vote(demo_table, scores, inputs - COLOUR_OFFSET, q_feats, IS_ORDINAL, RELATIVE)
            bias = bias + GAIN_SCALE * self.table_gain * as_logits(p_table) * use * seen.unsqueeze(-1).to(use.dtype)
        logits = F.pad(bias, (COLOUR_OFFSET, self.vocab_size - COLOUR_OFFSET - NUM_COLOURS))
        return embedding, logits

    def _through_map(self, tokens: torch.Tensor, feats: torch.Tensor, maps: torch.Tensor, used: torch.Tensor,
                     frame: torch.Tensor | None = None, boxes: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Grids [N, S] and their cells' features [N, S, F] read through a cover (maps, used [N, K];
        frame [N, 2]: what its frame maps read into, boxes: what its region maps read, models/grid_maps.py
        `read_through`):
        cell q gets the token and the features of the cell its map points at (PAD and zeros where
        none does). A cell keeps the features of where it came from, so descriptions compare alike
        across the demos and the query (all read through the same maps). Also -> the carried
        grid's cells [N, S] bool (the shape an output of a per-cell rule has)."""
        N, S = tokens.shape
        src, shape = read_through(tokens, maps, used, self.side, frame, self.regions, boxes)   # [N, S], S = none
        tokens = torch.cat([tokens, tokens.new_full((N, 1), PAD_ID)], 1).gather(1, src)
        feats = torch.cat([feats, feats.new_zeros(N, 1, feats.shape[-1])], 1)
        return tokens, feats.gather(1, src[..., None].expand(-1, -1, feats.shape[-1])), shape
