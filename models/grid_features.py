"""Per-cell features computed from a grid itself (`arch.grid_features`): what a cell is part of,
where it sits in it, and what it sees. Generic ARC vocabulary, not any one family's rule:

- position: row and column counted from the grid's top/left and from its bottom/right edge (the
  rotary positions only give offsets between cells; "the bottom row" needs the grid's extent);
- region: the same-colour 4-connected component the cell is in (background included): its size
  (exact up to 8, then log buckets), and whether it is background open to the border, enclosed background, a
  foreground region touching the border, or an inner one;
- object: the 8-connected set of foreground cells around the cell (multi-colour objects): its
  size (as the region's), whether it is the largest / smallest object of the grid, its bounding box's
  height and width, the cell's offset inside the box and whether it is on the box's edges;
- rays: in each of the 4 directions, the first foreground colour met (or the grid's edge), how far
  it is, and how many foreground cells lie that way (things fall until they hit something, lines
  are drawn until a wall); and along each of the 4 diagonals, the colour first met (or the edge);
- between: the colour the rays meet on both sides along the cell's row, its column, and either
  (the row's first), when it is the same on both sides (lines are drawn between cells of a colour);
- neighbourhood: how many of the 8 neighbours share the cell's colour, how many of the 4 and of
  the 8 are foreground; and whether the cell's colour is the grid's most / least frequent foreground colour.

The 8-neighbour count and the between features (2026-12-07), then the diagonal rays (2026-12-08),
were appended last: a checkpoint's table from before loads, the new rows at their init
(GridFeatureEmbedding).

`grid_features(tokens, side)` -> ids [N, S, NUM_FEATURES] (long; 0 = "not a grid cell" for every
feature, so PAD/EOS cells all look alike), computed with torch ops on the batch's own device
(no Python loop over cells; connected components by iterated min-label propagation with pointer
jumping, at most a few dozen passes on a 30x30 canvas). No gradient: the features are a function of
the tokens. Computed in the model, not the loader, so every path that hands the model tokens
(training, evaluation, test-time adaptation's in-memory splits) gets them without a new batch key
or dataset format, and the same code serves the query and the demos.

`GridFeatureEmbedding`: the ids -> [N, S, H], a sum of one learned vector per (feature, value)
(`F.embedding_bag`, no [N, S, F, H] intermediate), scaled like the token embeddings. The table
starts at zero, so a model with it computes exactly what the model without it computes at step 0,
and its gradient is non-zero from the first step.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from dataset.grids import COLOUR_OFFSET
from models.layers import trunc_normal_

MAX_POS = 16        # positions, box sizes, distances and counts are clamped to 1..MAX_POS (0 = not a grid cell)
EXACT_SIZES = 8     # sizes 1..8 keep their own value: ARC rules tell small objects apart by their exact size
SIZE_BUCKETS = 16   # then 9-16, 17-32, ... (log2 buckets) -> 9..15 (0 = none)

# (name, number of values): the order of the last axis of grid_features()
FEATURES = (
    ("row", MAX_POS + 1), ("col", MAX_POS + 1), ("row_from_bottom", MAX_POS + 1), ("col_from_right", MAX_POS + 1),
    ("region_size", SIZE_BUCKETS), ("region_kind", 5),
    ("object_size", SIZE_BUCKETS), ("object_rank", 5), ("object_height", MAX_POS + 1), ("object_width", MAX_POS + 1),
    ("object_row", MAX_POS + 1), ("object_col", MAX_POS + 1), ("object_row_edge", 5), ("object_col_edge", 5),
    *((f"ray_{d}_{k}", n) for d in ("down", "up", "right", "left")
      for k, n in (("colour", 12), ("distance", MAX_POS + 1), ("count", MAX_POS + 1))),
    ("same_neighbours", 10), ("foreground_neighbours", 6), ("colour_frequency", 6),
    ("foreground_neighbours_8", 10), ("row_between", 12), ("col_between", 12), ("between", 12),
    *((f"ray_{d}_colour", 12) for d in ("down_right", "down_left", "up_right", "up_left")),
)
DIAGONALS = {"down_right": (1, 1), "down_left": (1, -1), "up_right": (-1, 1), "up_left": (-1, -1)}
NUM_FEATURES = len(FEATURES)
# the features whose value is a colour the cell sees (2 + colour; 1: the grid's edge): a rule "becomes
# the colour it sees" is read as such too, whatever the colour (models/feature_select.py)
COLOUR_VALUED = (*(f"ray_{d}_colour" for d in ("down", "up", "right", "left", "down_right", "down_left", "up_right",
                                                  "up_left")), "row_between", "col_between", "between")
# the features whose values are ordered (counts, sizes, distances, positions): a value the demos never
# showed is read like the nearest one they did (models/feature_select.py); the others are categories
ORDINAL = ("row", "col", "row_from_bottom", "col_from_right", "region_size", "object_size", "object_height",
           "object_width", "object_row", "object_col",
           *(f"ray_{d}_{k}" for d in ("down", "up", "right", "left") for k in ("distance", "count")),
           "same_neighbours", "foreground_neighbours", "foreground_neighbours_8")
FEATURE_INDEX = {name: i for i, (name, _) in enumerate(FEATURES)}
_CARD = torch.tensor([n for _, n in FEATURES])
_OFFSETS = torch.cat([torch.zeros(1, dtype=torch.long), _CARD.cumsum(0)[:-1]])
TABLE_SIZE = int(_CARD.sum())

_DIRS4 = ((1, 0), (-1, 0), (0, 1), (0, -1))
_DIRS8 = _DIRS4 + ((1, 1), (1, -1), (-1, 1), (-1, -1))


def _shifted(x: torch.Tensor, dr: int, dc: int, fill) -> torch.Tensor:
    """y[..., r, c] = x[..., r + dr, c + dc] (fill outside). x: [N, side, side]."""
    p = F.pad(x, (1, 1, 1, 1), value=fill)
    side = x.shape[-1]
    return p[:, 1 + dr:1 + dr + side, 1 + dc:1 + dc + side]


# Iterations of component_labels before it first reads the device to test convergence: every grid
# of ARC-AGI-1 (training and evaluation, inputs and outputs, 4- and 8-connected) reaches the fixed
# point within 4, so the test below usually runs once per call (one host sync instead of one per
# iteration; on a GPU each drains the queue).
UNCHECKED_ITERATIONS = 4


def component_labels(key: torch.Tensor, diagonal: bool | torch.Tensor = False) -> torch.Tensor:
    """Connected components of equal keys. key: [N, side, side] long, -1 = not part of any
    component; diagonal: whether diagonal neighbours connect too (8- instead of 4-connected), for
    every grid or per grid ([N] bool: one call labels both kinds, with one convergence test).
    -> labels [N, S]: the smallest flat index of the cell's component, S where key < 0.

    Each iteration: every cell takes the smallest label among itself and its same-key neighbours,
    and hands it to the cell its old label points at too (hooking the root, so a whole tree moves at
    once); then two pointer jumps (label of the label). Labels only ever point into the cell's own
    component and only decrease, so the fixed point is each component's smallest index."""
    N, side, _ = key.shape
    S = side * side
    part = key >= 0
    label = torch.where(part, torch.arange(S, device=key.device).view(1, side, side), S).reshape(N, S)
    diagonal = torch.as_tensor(diagonal, device=key.device).view(-1, 1, 1)
    same = [(_shifted(key, dr, dc, -1) == key) & part & (diagonal if dr and dc else True) for dr, dc in _DIRS8]
    outside = label.new_full((N, 1), S)  # the label S (not a cell) points at itself
    for it in range(S + 1):  # converges in a few (see UNCHECKED_ITERATIONS); the bound only guards the loop
        grid = label.view(N, side, side)
        low = grid
        for (dr, dc), s in zip(_DIRS8, same):
            low = torch.minimum(low, torch.where(s, _shifted(grid, dr, dc, S), S))
        low = low.reshape(N, S)
        new = torch.cat([low, outside], 1).scatter_reduce(1, label, low, reduce="amin")[:, :S]
        for _ in range(2):
            new = torch.minimum(new, torch.cat([new, outside], 1).gather(1, new))
        if it >= UNCHECKED_ITERATIONS and torch.equal(new, label):
            break
        label = new
    return label


def _per_label(values: torch.Tensor, label: torch.Tensor, reduce: str, fill) -> torch.Tensor:
    """Reduce values [N, S] over each label [N, S] (labels 0..S) and read the result back per cell."""
    N, S = values.shape
    acc = values.new_full((N, S + 1), fill)
    acc = acc.scatter_reduce(1, label, values, reduce=reduce, include_self=True)
    return acc.gather(1, label)


def _size_bucket(n: torch.Tensor) -> torch.Tensor:
    """1..8 -> 1..8, 9-16 -> 9, 17-32 -> 10, ... (0 stays 0), capped at SIZE_BUCKETS - 1."""
    log = torch.ceil(torch.log2(n.clamp_min(1).float())).long() + EXACT_SIZES - 3
    return torch.where(n > EXACT_SIZES, log.clamp_max(SIZE_BUCKETS - 1), n.clamp_min(0))


def _edge_class(pos: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """1 single (lo == hi), 2 first, 3 inside, 4 last."""
    return torch.where(lo == hi, 1, torch.where(pos == lo, 2, torch.where(pos == hi, 4, 3)))


@torch.no_grad()
def grid_features(tokens: torch.Tensor, side: int) -> torch.Tensor:
    """tokens [..., S] (a grid at the top-left of a side x side canvas, dataset/grids.py) ->
    feature ids [..., S, NUM_FEATURES] long, each in 0..its number of values - 1 (0 off the grid)."""
    lead, S = tokens.shape[:-1], tokens.shape[-1]
    t = tokens.reshape(-1, S)
    N, dev = t.shape[0], t.device
    grid = t >= COLOUR_OFFSET
    colour = torch.where(grid, t - COLOUR_OFFSET, -1)                               # [N, S]
    fg, bg = grid & (colour > 0), grid & (colour == 0)
    g2, c2, fg2 = grid.view(N, side, side), colour.view(N, side, side), fg.view(N, side, side)
    h = g2[:, :, 0].sum(-1, keepdim=True)                                           # [N, 1]
    w = g2[:, 0, :].sum(-1, keepdim=True)
    idx = torch.arange(S, device=dev)
    r, c = (idx // side).expand(N, -1), (idx % side).expand(N, -1)
    clamp = lambda x: x.clamp(0, MAX_POS - 1) + 1  # noqa: E731  (0..15+ -> 1..16)
    feats = {
        "row": clamp(r), "col": clamp(c), "row_from_bottom": clamp(h - 1 - r), "col_from_right": clamp(w - 1 - c),
    }

    # regions: same-colour 4-connected components, background included; objects: 8-connected
    # foreground cells (any colours). One labelling call for both (one convergence test).
    region, obj = component_labels(torch.cat([c2, torch.where(fg2, 0, -1)]),
                                   torch.arange(2 * N, device=dev) >= N).split(N)
    region_size = _per_label(grid.long(), region, "sum", 0)
    lo_r = _per_label(torch.where(grid, r, S), region, "amin", S)
    hi_r = _per_label(torch.where(grid, r, -1), region, "amax", -1)
    lo_c = _per_label(torch.where(grid, c, S), region, "amin", S)
    hi_c = _per_label(torch.where(grid, c, -1), region, "amax", -1)
    border = (lo_r == 0) | (lo_c == 0) | (hi_r == h - 1) | (hi_c == w - 1)
    feats["region_size"] = _size_bucket(region_size)
    feats["region_kind"] = torch.where(bg, torch.where(border, 1, 2), torch.where(border, 3, 4))

    size = _per_label(fg.long(), obj, "sum", 0)
    big = size.masked_fill(~fg, 0).amax(1, keepdim=True)
    small = size.masked_fill(~fg, S + 1).amin(1, keepdim=True)
    rank = torch.where(size == big, 1, 0) + torch.where(size == small, 2, 0)
    o_lo_r = _per_label(torch.where(fg, r, S), obj, "amin", S)
    o_hi_r = _per_label(torch.where(fg, r, -1), obj, "amax", -1)
    o_lo_c = _per_label(torch.where(fg, c, S), obj, "amin", S)
    o_hi_c = _per_label(torch.where(fg, c, -1), obj, "amax", -1)
    feats["object_size"] = _size_bucket(size)
    feats["object_rank"] = torch.where(rank == 0, 4, rank)
    feats["object_height"] = clamp(o_hi_r - o_lo_r)
    feats["object_width"] = clamp(o_hi_c - o_lo_c)
    feats["object_row"] = clamp(r - o_lo_r)
    feats["object_col"] = clamp(c - o_lo_c)
    feats["object_row_edge"] = _edge_class(r, o_lo_r, o_hi_r)
    feats["object_col_edge"] = _edge_class(c, o_lo_c, o_hi_c)
    for name in ("object_size", "object_rank", "object_height", "object_width", "object_row", "object_col",
                 "object_row_edge", "object_col_edge"):
        feats[name] = torch.where(fg, feats[name], 0)

    # rays: the first foreground cell beyond the cell in each direction (cummin/cummax over the
    # positions of foreground cells, shifted by one so the cell itself does not count)
    pos_r = torch.where(fg2, r.view(N, side, side), -1)          # for "up": the last fg row above
    pos_c = torch.where(fg2, c.view(N, side, side), -1)
    big_r = torch.where(fg2, r.view(N, side, side), S)           # for "down": the first fg row below
    big_c = torch.where(fg2, c.view(N, side, side), S)
    count = fg2.long()
    rr, cc = r.view(N, side, side), c.view(N, side, side)
    hh, ww = h.view(N, 1, 1), w.view(N, 1, 1)
    rays = {
        "down": (_shifted(big_r, 1, 0, S).flip(1).cummin(1).values.flip(1), rr, hh, 1,
                 _shifted(count, 1, 0, 0).flip(1).cumsum(1).flip(1)),
        "up": (_shifted(pos_r, -1, 0, -1).cummax(1).values, rr, hh, 0, _shifted(count, -1, 0, 0).cumsum(1)),
        "right": (_shifted(big_c, 0, 1, S).flip(2).cummin(2).values.flip(2), cc, ww, 1,
                  _shifted(count, 0, 1, 0).flip(2).cumsum(2).flip(2)),
        "left": (_shifted(pos_c, 0, -1, -1).cummax(2).values, cc, ww, 0, _shifted(count, 0, -1, 0).cumsum(2)),
    }
    for d, (hit, here, extent, forward, n) in rays.items():
        found = (hit < extent) & (hit >= 0)
        vertical = d in ("down", "up")
        hit_r = torch.where(found, hit, 0) if vertical else rr
        hit_c = cc if vertical else torch.where(found, hit, 0)
        hit_colour = c2.reshape(N, S).gather(1, (hit_r * side + hit_c).reshape(N, S)).view(N, side, side)
        edge_dist = (extent - here) if forward else (here + 1)    # steps until the cell leaves the grid
        dist = torch.where(found, (hit - here).abs(), edge_dist)
        feats[f"ray_{d}_colour"] = torch.where(found, hit_colour + 2, 1).view(N, S)
        feats[f"ray_{d}_distance"] = dist.clamp(1, MAX_POS).view(N, S)
        feats[f"ray_{d}_count"] = clamp(n).view(N, S)

    # diagonal rays: the colour first met along each diagonal (lines are drawn at 45 degrees too)
    beyond = F.pad(torch.where(fg2, c2, -1), (side, side, side, side), value=-1)
    for d, (dr, dc) in DIAGONALS.items():
        hit = torch.full_like(c2, -1)
        for k in range(1, side):
            seen = beyond[:, side + k * dr:2 * side + k * dr, side + k * dc:2 * side + k * dc]
            hit = torch.where(hit < 0, seen, hit)
        feats[f"ray_{d}_colour"] = torch.where(hit >= 0, hit + 2, 1).view(N, S)

    # between: the colour the rays meet on both sides along the row / the column, when it is the same
    for axis, (a, b) in (("row", ("left", "right")), ("col", ("up", "down"))):
        ca, cb = feats[f"ray_{a}_colour"], feats[f"ray_{b}_colour"]
        feats[f"{axis}_between"] = torch.where(ca == cb, ca, 1)   # the edge on both sides: 1 (the ray's "edge")
    feats["between"] = torch.where(feats["row_between"] > 1, feats["row_between"], feats["col_between"])
    same = sum((_shifted(c2, dr, dc, -1) == c2).long() for dr, dc in _DIRS8).view(N, S)
    fg_nb = sum(_shifted(fg2, dr, dc, False).long() for dr, dc in _DIRS4).view(N, S)
    feats["same_neighbours"] = same + 1
    feats["foreground_neighbours"] = fg_nb + 1
    feats["foreground_neighbours_8"] = sum(_shifted(fg2, dr, dc, False).long() for dr, dc in _DIRS8).view(N, S) + 1
    hist = F.one_hot(colour.clamp_min(0), 10) * fg.unsqueeze(-1)                  # [N, S, 10]
    per_colour = hist.sum(1)                                                        # [N, 10]
    n_col = per_colour.gather(1, colour.clamp_min(0))
    most = per_colour.amax(1, keepdim=True)
    least = per_colour.masked_fill(per_colour == 0, S + 1).amin(1, keepdim=True)
    freq = torch.where(n_col == most, 1, 0) + torch.where(n_col == least, 2, 0)
    feats["colour_frequency"] = torch.where(fg, torch.where(freq == 0, 5, freq + 2), 2)

    out = torch.stack([feats[name] for name, _ in FEATURES], -1)
    out = torch.where(grid.unsqueeze(-1), out, 0)
    return out.reshape(*lead, S, NUM_FEATURES)


class GridFeatureEmbedding(nn.Module):
    """Feature ids [..., F] -> [..., H]: the sum of one learned vector per (feature, value),
    times sqrt(H / F) (unit RMS once trained to unit-scale rows, like the token embedding). Starts at
    zero (a model with it equals the model without it at step 0), or random with `init_std`."""

    def __init__(self, hidden_size: int, init_std: float = 0.0):
        super().__init__()
        self.weight = nn.Parameter(trunc_normal_(torch.empty(TABLE_SIZE, hidden_size), std=init_std))
        self.scale = math.sqrt(hidden_size / NUM_FEATURES)
        self.register_buffer("offsets", _OFFSETS.clone(), persistent=False)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # a checkpoint from before a feature was appended to FEATURES has a shorter table: it loads,
        # and the appended features' rows keep this module's init (zero for arch.grid_features)
        old = state_dict.get(prefix + "weight")
        if old is not None and old.ndim == 2 and old.shape[0] < TABLE_SIZE and old.shape[1] == self.weight.shape[1]:
            state_dict[prefix + "weight"] = torch.cat([old, self.weight.detach()[old.shape[0]:].to(old)], 0)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, ids: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """weights: one per feature, broadcastable to ids (a feature's vector times its weight)."""
        flat = (ids + self.offsets).reshape(-1, NUM_FEATURES)
        if weights is not None:
            weights = weights.to(self.weight.dtype).expand(ids.shape).reshape(-1, NUM_FEATURES)
        out = F.embedding_bag(flat, self.weight, mode="sum", per_sample_weights=weights)
        return self.scale * out.view(*ids.shape[:-1], -1)
