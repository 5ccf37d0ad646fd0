"""`arch.cell_lookup_select`: which grid feature decides a cell's change, judged from the demos.

cell_lookup matches a query cell to the demo cells whose description (colour + all grid features)
is nearest. Most features are irrelevant to any one rule, and an irrelevant feature that differs
pushes the right demo cells away: in `crowd` the neighbour count decides, in `size_recolour` the
object's size, in `enclose` whether the region is open to the border, and each puzzle's demos say
which. This module asks them, without parameters: for every feature f, does "(colour, value of f)
-> change" predict the demo cells, tested leave-one-demo-out (each demo is predicted from the
others' table: a feature that only memorises, like a position that is unique to one cell, predicts
nothing in a demo it has not seen, and a wrong prediction costs more than none)? The features that
predict best are kept at full weight in the description and the others left out (models/
cell_lookup.py OTHER_WEIGHT), so "cells like this one" means "alike in what matters here". The
colour alone is a candidate too (a feature with a single value): when it predicts as well as any
feature (a recolouring), no feature is preferred.

With `arch.cell_lookup_table` the table itself votes (`table_vote`): each query cell gets the
changes the demo cells with its colour and its value of the best feature had, a rule read off the
demos with no learned part but its gain in the logits (models/cell_lookup.py), so it reads a family
never trained on as well as one trained on. A count, size or distance the demos never showed reads
the nearest one they did (`nearest_seen`): "at least 3 neighbours" reaches the query's cell with 7.
A feature whose value is a colour the cell sees (a ray's, the colour it lies between) is also scored
relative to the cell (`relative_columns`): "sees another colour -> became the colour it sees" is one
table row for every colour, so a line drawn in a colour no demo used is still read.

Why it should carry to real ARC: "find the property the demos' changes follow" is how a person
reads many ARC tasks (recolour by size, by enclosure, by the neighbours, by what a row sees), and
the property is chosen per puzzle from a generic vocabulary (models/grid_features.py), not
written for one family. A rule that needs two features at once gets the best single one.
"""
from __future__ import annotations

import torch

from dataset.tokens import NUM_COLOURS
from models.grid_features import COLOUR_VALUED, FEATURE_INDEX, FEATURES, ORDINAL

MAX_VALUES = max(n for _, n in FEATURES)   # feature ids are 0..MAX_VALUES - 1
NUM_CHANGES = 2 + NUM_COLOURS              # "unchanged", "became colour c" (models/cell_lookup.py), and:
BECAME_SEEN = 1 + NUM_COLOURS              # "became the colour it sees" (a relative column's change)
TIE = 1e-6                                 # scores this close to the best count as the best
# a demo cell whose key the other demos saw with another change costs this many right ones: a
# feature the demos contradict loses to one that predicts fewer cells without contradiction (an
# unseen key costs nothing: a value seen in one demo only is common for counts and sizes). At init
# (python -m bench.lookup_vote <data>/puzzles/eval --through-map --select, all 18 families' held-out
# puzzles) with 0 instead (an unseen key as wrong as a contradicted one): crowd exact 0.40 vs 0.73,
# size_recolour 0.69 vs 1.00, outline 0.55 vs 0.64, the others equal; 10: outline 0.64, 100: 0.55.
CONTRADICTION_COST = 3.0
# the model's features (models/grid_features.py) that get a relative column (`relative_columns`)
RELATIVE = torch.tensor([FEATURE_INDEX[name] for name in COLOUR_VALUED])
# [F + R + 1]: the ordered columns (the relative ones and the last, the colour alone, are none)
IS_ORDINAL = torch.tensor([name in ORDINAL for name, _ in FEATURES] + [False] * (len(RELATIVE) + 1))


def relative_columns(colour: torch.Tensor, feats: torch.Tensor, relative: torch.Tensor | None,
                     change: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Colour-valued features read relative to the cell: feats [..., S, F] -> [..., S, F + R], the R
    appended columns (one per index in `relative`) holding what the feature sees as "no colour" (its
    0 / 1), "my colour" (2) or "another colour" (3); change [..., S] -> per column [..., S, F + R],
    a relative column's "became the colour the feature sees" as BECAME_SEEN. So a rule that copies
    what a cell sees (a ray's colour, the colour it lies between) is one table row whatever the
    colours, and reaches colours the demos never used. relative None: no columns appended."""
    if relative is None or not len(relative):
        return feats, None if change is None else change[..., None].expand(*feats.shape)
    seen = feats[..., relative.to(feats.device)]                                   # [..., S, R]
    is_colour = seen >= 2
    rel = torch.where(is_colour, torch.where(seen - 2 == colour[..., None], 2, 3), seen)
    out = torch.cat([feats, rel], -1)
    if change is None:
        return out, None
    became_seen = is_colour & (change[..., None] == seen - 1)   # change 1 + c, seen 2 + c
    rel_change = torch.where(became_seen, BECAME_SEEN, change[..., None].expand(*seen.shape))
    return out, torch.cat([change[..., None].expand(*feats.shape), rel_change], -1)


def _keys(colour: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
    """colour [..., S] (0..9 on the grid), feature ids [..., S, F] -> table keys [..., S, F + 1]: (colour,
    value) per feature, and (colour, 0) for the colour alone in the last column."""
    feats = torch.cat([feats, feats.new_zeros(*feats.shape[:-1], 1)], -1)
    return colour.clamp(0, NUM_COLOURS - 1)[..., None] * MAX_VALUES + feats


def _best(scores: torch.Tensor) -> torch.Tensor:
    """scores [B, F + 1] -> [B, F + 1] bool: the candidates tied for the best score."""
    return scores >= scores.amax(-1, keepdim=True) - TIE


@torch.no_grad()
def feature_scores(colour: torch.Tensor, feats: torch.Tensor, change: torch.Tensor, keys: torch.Tensor,
                   relative: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """How well each feature, with the cell's colour, predicts the change of a puzzle's demo cells,
    leave-one-demo-out. colour [B, D, S] (0..9 where keys), feats [B, D, S, F] ids, change [B, D, S]
    (0..10), keys [B, D, S] bool (the aligned demo cells). -> [B, F + 1]: (key cells whose change
    the other demos' majority for their (colour, value) predicts - CONTRADICTION_COST x those it
    mispredicts) / key cells; a key the other demos never saw counts neither way. The last column:
    the colour alone. All 0 for a puzzle with fewer than two demos with keys. Also -> the demos'
    table [B, F + 1, keys, changes]: how many key cells with each (colour, value) had each change.
    relative: indices of colour-valued features, each also scored as a relative column
    (`relative_columns`; F counts them, before the colour alone)."""
    feats, changes = relative_columns(colour, feats, relative, change)
    B, D, S, F = feats.shape
    changes = torch.cat([changes, change[..., None]], -1)                      # the colour alone: as it is
    slot = _keys(colour, feats) * NUM_CHANGES + changes                         # [B, D, S, F + 1]
    table = NUM_COLOURS * MAX_VALUES * NUM_CHANGES
    counts = torch.zeros(B * D, F + 1, table, device=feats.device)
    weight = keys.reshape(B * D, S, 1).expand(-1, -1, F + 1).to(counts.dtype)
    counts.scatter_add_(2, slot.reshape(B * D, S, F + 1).transpose(1, 2), weight.transpose(1, 2))
    counts = counts.view(B, D, F + 1, NUM_COLOURS * MAX_VALUES, NUM_CHANGES)
    others = counts.sum(1, keepdim=True) - counts                            # each demo's leave-out table
    best = others.amax(-1, keepdim=True)
    # the change the other demos predict for a key: their majority (ties: every tied change counts
    # as half right or worse, so a key seen once each way predicts nothing certain); unseen: none
    predicted = (others == best) & (best > 0)
    share = predicted.to(counts.dtype) / predicted.sum(-1, keepdim=True).clamp_min(1)
    right = (counts * share).sum((1, 3, 4))                                   # [B, F + 1]
    wrong = (counts * (best > 0)).sum((1, 3, 4)) - right
    cells = keys.sum((1, 2)).to(right.dtype)[:, None]
    return (right - CONTRADICTION_COST * wrong) / cells.clamp_min(1), counts.sum(1)


def nearest_seen(table: torch.Tensor, ordinal: torch.Tensor) -> torch.Tensor:
    """A demos' table [..., F + 1, keys, changes] in which, for the ordered features (ordinal [F + 1]
    bool, e.g. IS_ORDINAL), a (colour, value) key the demos never showed takes the row of the nearest
    value they showed with that colour (ties: the lower value; value 0, "not a grid cell", neither
    borrows nor lends). A rule "at least k neighbours" or "objects larger than 3" then reaches the
    counts and sizes only the query has; a category (a colour, a region kind) borrows nothing."""
    *lead, F1, _, C = table.shape
    t = table.view(*lead, F1, NUM_COLOURS, MAX_VALUES, C)
    v = torch.arange(MAX_VALUES, device=table.device)
    lender = (t.sum(-1) > 0) & (v > 0)                                               # [..., F + 1, 10, V]
    # cost of value u borrowing from value v: |u - v| (+ a tie-break to the lower), never from a non-lender
    cost = (v[:, None] - v[None, :]).abs() + v[None, :] * 1e-3                        # [V, V]
    cost = torch.where(lender[..., None, :], cost.to(t.dtype), float("inf"))           # [..., F + 1, 10, V, V]
    best_cost, nearest = cost.min(-1)
    borrow = ordinal.to(table.device).view(-1, 1, 1) & ~lender & (v > 0) & best_cost.isfinite()
    rows = t.gather(-2, nearest[..., None].expand(*nearest.shape, C))
    return torch.where(borrow[..., None], rows, t).view(table.shape)


@torch.no_grad()
def table_vote(table: torch.Tensor, scores: torch.Tensor, colour: torch.Tensor, feats: torch.Tensor,
               ordinal: torch.Tensor | None = None, relative: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """The rule the demos' table states, applied to the query: each query cell gets the changes the
    demo cells with its colour and its value of the best-scoring feature had (their shares; features
    tied for best, the colour alone among them, averaged). table [B, F + 1, keys, changes], scores
    [B, F + 1] (feature_scores), colour [B, S] (0..9 on the grid), feats [B, S, F], ordinal [F + 1] bool
    or None (`nearest_seen`: an ordered feature's value the demos never showed reads the nearest),
    relative: as feature_scores' (a relative column's "became the colour it sees" votes for the colour
    the query cell sees) ->
    (p [B, S, changes], seen [B, S] bool: a best feature saw the cell's key in the demos; p is 0 where
    not, and for a puzzle whose demos cannot tell)."""
    chosen = _best(scores) & (scores.amax(-1, keepdim=True) > 0)                          # [B, F + 1]
    if ordinal is not None:   # an ordered feature's unseen value reads the nearest seen one
        table = nearest_seen(table, ordinal)
    all_feats, _ = relative_columns(colour, feats, relative)
    key = _keys(colour, all_feats)                                                       # [B, S, F + 1]
    rows = table.gather(2, key.transpose(1, 2)[..., None].expand(-1, -1, -1, NUM_CHANGES))  # [B, F + 1, S, changes]
    # "became the colour it sees" -> "became" the colour this cell's feature sees (1 + c; none: 0 = dropped)
    sees = torch.zeros_like(key)
    if relative is not None and len(relative):
        nf = feats.shape[-1]
        sees[..., nf:nf + len(relative)] = (feats[..., relative.to(feats.device)] - 1).clamp_min(0)
    sees = sees.transpose(1, 2)                                                          # [B, F + 1, S]
    became = torch.nn.functional.one_hot(sees, BECAME_SEEN).to(rows.dtype) * (sees > 0)[..., None]
    rows = rows[..., :BECAME_SEEN] + rows[..., BECAME_SEEN:] * became
    n = rows.sum(-1, keepdim=True)
    use = (chosen[:, :, None, None] & (n > 0)).to(rows.dtype)
    p = (rows / n.clamp_min(1) * use).sum(1) / use.sum(1).clamp_min(1)
    return p, use.sum(1).squeeze(-1) > 0


def feature_weights(scores: torch.Tensor, others: float, relative: torch.Tensor | None = None) -> torch.Tensor:
    """scores [B, F + 1] (feature_scores) -> per-puzzle weights of the F features [B, F]: 1 for the
    best-predicting ones, `others` for the rest; `others` for all when the colour alone predicts as
    well as the best feature; 1 for all (no selection) when the demos cannot tell (all scores 0).
    relative: as feature_scores' (F then counts them): a best relative column weighs its feature 1."""
    best = _best(scores)
    chosen = best[:, :-1]
    if relative is not None and len(relative):
        nf = chosen.shape[-1] - len(relative)
        chosen = chosen[:, :nf].long().index_add(1, relative.to(chosen.device), chosen[:, nf:].long()) > 0
    weights = torch.where(chosen & ~best[:, -1:], 1.0, others)   # the last column: the colour alone
    return torch.where(scores.amax(-1, keepdim=True) > 0, weights, 1.0).to(scores.dtype)

