"""`arch.answer_size`: the answer's size, read from the demos by a vocabulary of size rules.

An ARC answer has its query's size in about two thirds of the tasks; most of the others have a size
that is a simple function of the input grid: its transpose, one constant size, a multiple or a
fraction of it, a count (of objects, of same-colour regions, of colours, of foreground cells) laid out
as a row, a column or a square or multiplying a side, the bounding box of the foreground, of one
colour's cells or of the objects of a size (grid_maps.REGION_KINDS). Each is a candidate rule
(`SIZE_RULES`, simplest first); the first that gives every real demo its output's size is the
puzzle's, and applied to the query input it gives the answer's size. Nothing is learned but the gain
with which that frame (colour cells inside, EOS on the row below and the column right of it, as
dataset/grids.py writes a grid) is added to the output logits; the gain starts at zero, so a model
with it equals the model without it at step 0.

Why it is generic: the rules are grid quantities, not any task's operator, and the demos choose among
them, as models/feature_select.py lets them choose the feature a cell's change follows. On ARC-AGI-1
the first consistent rule gives the right size for 90% of the evaluation test outputs (66% keep the
query's size): measured by `python -m bench.answer_size <folder of ARC JSON tasks>`. What goes inside
the frame stays the model's (and cell_lookup's) to say; a wrong frame costs where the rule guessed
wrong, and the gain weighs that against where it is right.
"""
from __future__ import annotations

import torch
from torch import nn

from dataset.tokens import COLOUR_OFFSET, EOS_ID, NUM_COLOURS
from models.cell_lookup import GAIN_SCALE, VOTE_FLOOR
from models.grid_features import component_labels
from models.grid_maps import REGION_KINDS, grid_sizes, object_sizes, region_boxes

MULTIPLES = [(a, b) for a in range(1, 5) for b in range(1, 5) if (a, b) != (1, 1)]
COUNTS = ("objects", "regions", "colours", "cells")


def _rule_names() -> list[str]:
    names = ["same", "transpose", "constant"]
    names += [f"times_{a}x{b}" for a, b in MULTIPLES] + [f"over_{a}x{b}" for a, b in MULTIPLES]
    for n in COUNTS:
        names += [f"row_of_{n}", f"column_of_{n}", f"square_of_{n}", f"height_times_{n}", f"width_times_{n}",
                  f"both_times_{n}"]
    return names + ["foreground_box", "foreground_box_transposed"] + [f"{kind}_box" for kind in REGION_KINDS[1:]]


SIZE_RULES = tuple(_rule_names())


def grid_quantities(tokens: torch.Tensor, side: int) -> dict[str, torch.Tensor]:
    """tokens [N, S] (a grid at the canvas's top-left) -> per grid [N] long: h, w, the counts of
    COUNTS (8-connected foreground objects of any colours, 4-connected same-colour foreground regions,
    distinct foreground colours, foreground cells), and per grid [N, NUM_REGION_KINDS, 4] the
    bounding boxes of models/grid_maps.py's REGION_KINDS (the foreground's, one colour's, the objects'
    of a size, ...: `region_boxes`, from the same labelling)."""
    N, S = tokens.shape
    h, w = grid_sizes(tokens, side)
    grid = tokens >= COLOUR_OFFSET
    colour = torch.where(grid, tokens - COLOUR_OFFSET, -1)
    fg = grid & (colour > 0)
    idx = torch.arange(S, device=tokens.device)
    roots = lambda labels: ((labels == idx) & fg).sum(-1)  # noqa: E731  one root cell per component
    fg2 = fg.view(N, side, side)
    # 8-connected objects of any colours and 4-connected same-colour regions: one labelling call
    keys = torch.cat([torch.where(fg2, 0, -1), torch.where(fg2, colour.view(N, side, side), -1)])
    labels = component_labels(keys, torch.arange(2 * N, device=tokens.device) < N).view(2, N, S)
    objects, regions = roots(labels).unbind(0)
    colours = (torch.nn.functional.one_hot(colour.clamp_min(0), 10).bool() & fg[..., None]).any(1).sum(-1)
    boxes = region_boxes(tokens, side, object_sizes(tokens, side, labels[0]))       # [N, R, 4]
    return {"h": h, "w": w, "objects": objects, "regions": regions, "colours": colours, "cells": fg.sum(-1),
            "boxes": boxes}


def candidate_sizes(tokens: torch.Tensor, side: int, constant: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """tokens [N, S], constant [N, 2] (the puzzle's constant size candidate) -> ([N, len(SIZE_RULES), 2]
    long: each rule's (height, width) for the grid, 0 where a rule gives none (a fraction that does
    not divide, an empty count or box); the grids' region boxes [N, NUM_REGION_KINDS, 4])."""
    q = grid_quantities(tokens, side)
    h, w = q["h"], q["w"]
    sizes = [(h, w), (w, h), (constant[:, 0], constant[:, 1])]
    sizes += [(a * h, b * w) for a, b in MULTIPLES]
    sizes += [(torch.where(h % a == 0, h // a, 0), torch.where(w % b == 0, w // b, 0)) for a, b in MULTIPLES]
    one = torch.ones_like(h)
    for name in COUNTS:
        n = q[name]
        sizes += [(one, n), (n, one), (n, n), (n * h, w), (h, n * w), (n * h, n * w)]
    box_h, box_w = q["boxes"][..., 2], q["boxes"][..., 3]                           # [N, R]
    sizes += [(box_h[:, 0], box_w[:, 0]), (box_w[:, 0], box_h[:, 0])]
    sizes += [(box_h[:, k], box_w[:, k]) for k in range(1, len(REGION_KINDS))]
    out = torch.stack([torch.stack(s, -1) for s in sizes], 1)                     # [N, K, 2]
    return torch.where((out > 0).all(-1, keepdim=True), out, 0), q["boxes"]


@torch.no_grad()
def size_rule(demo_inputs: torch.Tensor, demo_labels: torch.Tensor, demo_mask: torch.Tensor, side: int,
              query: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """(demo_inputs, demo_labels [B, D, S], demo_mask [B, D], optionally the query inputs [B, S]) ->
    (the index in SIZE_RULES of the first rule that gives every real demo its output's size [B] long,
    whether one does [B] bool (not for a puzzle with no real demo), the puzzle's constant size
    candidate: its first real demo output's [B, 2], the query's candidate sizes [B, K, 2] or None, the
    region boxes of the demo inputs (and the queries after them) [B * D (+ B), NUM_REGION_KINDS, 4],
    which models/grid_maps.py's region maps read)."""
    B, D, S = demo_inputs.shape
    out_h, out_w = grid_sizes(demo_labels.reshape(B * D, S), side)
    out_size = torch.stack([out_h, out_w], -1).view(B, D, 2)
    first_real = demo_mask.long().argmax(1)                                          # [B]
    constant = out_size[torch.arange(B, device=demo_inputs.device), first_real]       # [B, 2]
    grids, constants = demo_inputs.reshape(B * D, S), constant.repeat_interleave(D, 0)
    if query is not None:  # the query's candidates in the same call (one labelling of every grid)
        grids, constants = torch.cat([grids, query]), torch.cat([constants, constant])
    sizes, boxes = candidate_sizes(grids, side, constants)
    demo_sizes, query_sizes = sizes[:B * D], (sizes[B * D:] if query is not None else None)
    fits = (demo_sizes.view(B, D, -1, 2) == out_size[:, :, None]).all(-1) | ~demo_mask[..., None]   # [B, D, K]
    fits = fits.all(1) & demo_mask.any(1, keepdim=True)                              # [B, K]
    return fits.long().argmax(-1), fits.any(-1), constant, query_sizes, boxes


@torch.no_grad()
def answer_size(demo_inputs: torch.Tensor, demo_labels: torch.Tensor, demo_mask: torch.Tensor,
                query: torch.Tensor, side: int, with_boxes: bool = False) -> tuple[torch.Tensor, ...]:
    """(demo_inputs, demo_labels [B, D, S], demo_mask [B, D], query inputs [B, S]) -> (the answer's
    (height, width) [B, 2], known [B] bool): `size_rule`'s rule applied to the query; unknown when no
    rule fits, when the puzzle has no real demo, or when the size does not fit the canvas.
    with_boxes: also the region boxes of the demo inputs and the queries [B * D + B, NUM_REGION_KINDS, 4]
    (from the same labelling: the region maps' boxes without labelling the grids again)."""
    rule, fits, _, candidates, boxes = size_rule(demo_inputs, demo_labels, demo_mask, side, query)
    B = rule.shape[0]
    size = candidates.gather(1, rule.view(B, 1, 1).expand(-1, 1, 2)).squeeze(1)
    known = fits & (size > 0).all(-1) & (size <= side).all(-1)
    return (size, known, boxes) if with_boxes else (size, known)


def frame_logits(size: torch.Tensor, known: torch.Tensor, side: int, vocab_size: int) -> torch.Tensor:
    """The answer's frame as a vote on the output tokens: (size [B, 2], known [B]) -> [B, S, vocab]:
    log(p + floor) with p = "a colour" on the cells inside the frame (every colour alike: which one is
    not the frame's to say), "EOS" on the row below it and the column right of it (where the canvas
    has them); 0 elsewhere (cells beyond the EOS carry no label) and for an unknown size."""
    B = size.shape[0]
    idx = torch.arange(side * side, device=size.device)
    r, c = (idx // side)[None], (idx % side)[None]                                   # [1, S]
    h, w = size[:, :1], size[:, 1:]                                                  # [B, 1]
    inside = (r < h) & (c < w)
    boundary = ((r == h) & (c <= w)) | ((c == w) & (r <= h))
    floor = torch.log(torch.tensor(VOTE_FLOOR, device=size.device))
    colour_class = torch.zeros(vocab_size, device=size.device, dtype=torch.bool)
    colour_class[COLOUR_OFFSET:COLOUR_OFFSET + NUM_COLOURS] = True
    eos_class = torch.arange(vocab_size, device=size.device) == EOS_ID
    bias = torch.where(inside[..., None], torch.where(colour_class, 0.0, floor), 0.0)
    bias = torch.where(boundary[..., None], torch.where(eos_class, 0.0, floor), bias)
    return bias * known.view(B, 1, 1)


class AnswerSize(nn.Module):
    """(demo inputs / labels [B, D, S], demo mask [B, D], query inputs [B, S]) -> the answer's frame
    as an output logit term [B, S, vocab], GAIN_SCALE x gain x `frame_logits` (the gain starts at 0)."""

    def __init__(self, vocab_size: int, side: int):
        super().__init__()
        if vocab_size < COLOUR_OFFSET + NUM_COLOURS:
            raise ValueError(f"answer_size: vocab_size {vocab_size} has no room for the {NUM_COLOURS} colours")
        self.vocab_size, self.side = vocab_size, side
        self.gain = nn.Parameter(torch.zeros(()))

    def forward(self, demo_inputs: torch.Tensor, demo_labels: torch.Tensor, demo_mask: torch.Tensor,
                inputs: torch.Tensor) -> torch.Tensor:
        return self.vote(*answer_size(demo_inputs, demo_labels, demo_mask, inputs, self.side))

    def vote(self, size: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
        """`answer_size`'s (size [B, 2], known [B]) -> the frame's output logit term [B, S, vocab]."""
        return GAIN_SCALE * self.gain * frame_logits(size, known, self.side, self.vocab_size)
