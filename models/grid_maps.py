"""Candidate cell maps of a grid and the layers that use them (`arch.map_read`).

A candidate map sends each cell q of the answer canvas to the cell of the query input it reads:
q is first translated by t, then taken through the inverse of a dihedral map d of the input grid
(anchored at its top-left corner, sized h x w from the canvas). The 8 dihedral maps (in
dataset/augment.py's numbering) times 12 translations (none, the 8 one-cell shifts, one grid
height up, one grid width left, both) give 96 maps: every flip/rotation, every one-cell shift,
and the repeated or mirrored copies of a tiling, each a single map; compositions come from
applying reads one after another (layers, recursion).

- `MapRead`: attention whose pattern is built from the maps instead of q.k: each query cell,
  per head, puts softmax weights on the 96 maps (read from its own state) and gets the
  weighted values of the cells they point at (a cell outside the canvas reads zero). "Which map"
  is a learned choice with a clean gradient; the read itself is exact, so nothing has to learn to
  be position-sharp. Its output projection starts at zero (a model with it equals the model
  without it at step 0).
- `MapMatch`: for each map, how well the demos agree with it (a learned score of each demo output
  cell's token against the input token the map points at, averaged over the cells and demos):
  the positional analogue of the colour table, it hands the map choice what the demos show.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from dataset.tokens import COLOUR_OFFSET, NUM_COLOURS
from models.encoders.common import selected_rows
from models.grid_features import component_labels
from models.layers import Linear

# cell (r, c) of an h x w grid lands at (a*r + b*c + e, f*r + g*c + k) of the transformed grid,
# e, k in units of (h - 1, w - 1): rows (a, b, e_h, e_w), cols (f, g, k_h, k_w)
_DIHEDRAL_AFFINE = (
    ((1, 0, 0, 0), (0, 1, 0, 0)),    # 0 id: (r, c)
    ((0, -1, 0, 1), (1, 0, 0, 0)),   # 1 rot90: (w-1-c, r)
    ((-1, 0, 1, 0), (0, -1, 0, 1)),  # 2 rot180: (h-1-r, w-1-c)
    ((0, 1, 0, 0), (-1, 0, 1, 0)),   # 3 rot270: (c, h-1-r)
    ((0, 1, 0, 0), (1, 0, 0, 0)),    # 4 transpose: (c, r)
    ((1, 0, 0, 0), (0, -1, 0, 1)),   # 5 flip left-right: (r, w-1-c)
    ((-1, 0, 1, 0), (0, 1, 0, 0)),   # 6 flip up-down: (h-1-r, c)
    ((0, -1, 0, 1), (-1, 0, 1, 0)),  # 7 anti-transpose: (w-1-c, h-1-r)
)
NUM_DIHEDRAL = len(_DIHEDRAL_AFFINE)
# the dihedral maps that swap a grid's height and width (their row depends on the column)
TRANSPOSES = torch.tensor([a[0][1] != 0 for a in _DIHEDRAL_AFFINE])
# translations (rows, cols) as (unit, grid) parts: t = unit + grid * (h, w)
_TRANSLATIONS = ((0, 0, 0, 0), (-1, 0, 0, 0), (1, 0, 0, 0), (0, -1, 0, 0), (0, 1, 0, 0), (-1, -1, 0, 0), (-1, 1, 0, 0),
                 (1, -1, 0, 0), (1, 1, 0, 0), (0, 0, -1, 0), (0, 0, 0, -1), (0, 0, -1, -1))
NUM_MAPS = NUM_DIHEDRAL * len(_TRANSLATIONS)
# The map choice's logits are scaled so that Adam's ~lr-sized weight steps move them this many
# times faster: a rule read from the demos has to settle a choice among 96 within a few hundred steps.
MAP_LOGIT_SCALE = 10.0
# MapMatch's initial cost of a wrong cell (a right one earns 1): a rule has to hold on every cell,
# so one wrong cell in five cancels four right ones.
MISMATCH_COST = 4.0
UNCOVERED_COST = 0.25  # ... and of a cell it points off the input grid for
# Initial weight of the demos' agreement in the map choice: the consistent map's agreement is ~1,
# a map wrong on a tenth of the cells 0.5, so this starts the choice at the consistent map.
AGREEMENT_GAIN = 16.0


def grid_sizes(canvases: torch.Tensor, side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(h, w) of the grid at the top-left of each flat canvas [..., side*side]: the colour cells of
    the first column and of the first row (dataset/grids.py writes grids there)."""
    colour = (canvases >= COLOUR_OFFSET).view(*canvases.shape[:-1], side, side)
    return colour[..., :, 0].sum(-1), colour[..., 0, :].sum(-1)


def dihedral_positions(rows: torch.Tensor, cols: torch.Tensor, h: torch.Tensor, w: torch.Tensor,
                       inverse: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The 8 dihedral maps of h x w grids as affine maps of cell coordinates (cells outside the
    grid are mapped by the same affine map). inverse=False: where each cell lands in the
    transformed grid; inverse=True: for each cell of the transformed grid, the cell it comes from.
    rows, cols: [..., L] (or a shared [L]); h, w: [...]. -> (rows, cols) [..., 8, L].
    The per-cell definition; map_sources computes the same per axis (`_map_axes`; a test holds them equal)."""
    A = torch.tensor(_DIHEDRAL_AFFINE, dtype=torch.long, device=rows.device)  # [8, 2, 4]
    r, c = rows.unsqueeze(-2), cols.unsqueeze(-2)                      # [..., 1, L]
    hm, wm = (h - 1)[..., None, None], (w - 1)[..., None, None]        # [..., 1, 1]
    a, b, eh, ew = (A[:, 0, i].view(-1, 1) for i in range(4))        # [8, 1] each: the row map
    f, g, kh, kw = (A[:, 1, i].view(-1, 1) for i in range(4))        # the column map
    t_r, t_c = eh * hm + ew * wm, kh * hm + kw * wm
    if not inverse:
        return a * r + b * c + t_r, f * r + g * c + t_c
    # the linear part is a signed permutation: its inverse is its transpose
    return a * (r - t_r) + f * (c - t_c), b * (r - t_r) + g * (c - t_c)


def _map_axes(h: torch.Tensor, w: torch.Tensor, side: int) -> tuple[torch.Tensor, ...]:
    """map_sources per axis: the inverse of a dihedral map is a signed permutation, so a source's row
    and column each depend on the cell's row alone or its column alone; each is the sum of a row
    part and a column part (one of them 0), and so is its flat index. -> (row part, column part of
    the flat source index, whether each part is on the canvas, whether each is on the h x w grid),
    each [N, 12, 8, side] (translation, dihedral, the cell's row or column)."""
    axis = torch.arange(side, device=h.device).view(1, 1, 1, side)
    T = torch.tensor(_TRANSLATIONS, dtype=torch.long, device=h.device)              # [12, 4]
    A = torch.tensor(_DIHEDRAL_AFFINE, dtype=torch.long, device=h.device)           # [8, 2, 4]
    hm, wm = (h - 1).view(-1, 1), (w - 1).view(-1, 1)
    tr = T[:, 0] + T[:, 2] * h.view(-1, 1)                                          # [N, 12]
    tc = T[:, 1] + T[:, 3] * w.view(-1, 1)
    t_r = A[:, 0, 2] * hm + A[:, 0, 3] * wm                                         # [N, 8]: the dihedral's offsets
    t_c = A[:, 1, 2] * hm + A[:, 1, 3] * wm
    R = axis + (tr[:, :, None] - t_r[:, None, :])[..., None]                        # [N, 12, 8, side] per row
    C = axis + (tc[:, :, None] - t_c[:, None, :])[..., None]                        # ... per column
    a, b, f, g = (x.view(1, 1, -1, 1) for x in (A[:, 0, 0], A[:, 0, 1], A[:, 1, 0], A[:, 1, 1]))
    # the inverse map (the linear part transposed): source row = a R + f C, source column = b R + g C
    rows_r, cols_r, rows_c, cols_c = a * R, b * R, f * C, g * C
    on = lambda r, c: (r >= 0) & (r < side) & (c >= 0) & (c < side)  # noqa: E731  (a zero part is always in)
    hh, ww = h.view(-1, 1, 1, 1), w.view(-1, 1, 1, 1)
    on_grid = lambda r, c: (r >= 0) & (r < hh) & (c >= 0) & (c < ww)  # noqa: E731  (and in it when h, w > 0)
    return (rows_r * side + cols_r, rows_c * side + cols_c, on(rows_r, cols_r), on(rows_c, cols_c),
            on_grid(rows_r, cols_r), on_grid(rows_c, cols_c))


def _outer(row: torch.Tensor, col: torch.Tensor, op) -> torch.Tensor:
    """[N, 12, 8, side] per row and per column -> [N, NUM_MAPS, side * side]."""
    N, side = row.shape[0], row.shape[-1]
    return op(row[..., :, None], col[..., None, :]).reshape(N, NUM_MAPS, side * side)


def map_sources(h: torch.Tensor, w: torch.Tensor, side: int) -> torch.Tensor:
    """For grids h x w [N] on a side x side canvas: the flat canvas index each map reads for each
    cell, [N, NUM_MAPS, side*side], or side*side (a zero row) where it points off the canvas.
    Map m = translation m // 8 followed by the inverse of dihedral m % 8 (computed per axis, `_map_axes`)."""
    row, col, row_on, col_on, _, _ = _map_axes(h, w, side)
    return torch.where(_outer(row_on, col_on, torch.logical_and), _outer(row, col, torch.add), side * side)


class MapRead(nn.Module):
    """h [B, P+S, H] -> update [B, P+S, H] (zero on the P context tokens): each canvas cell reads the
    values of the cells that candidate maps point at, weighted per head by its softmax map choice.
    The candidates are the `top_k` maps the demos agree with most (MapMatch; the first `top_k`
    maps without demos), so the read costs k gathers whatever the number of maps. The choice
    logits are the cell's own (learned from its state, zero at first) plus `agreement_gain` times
    the demos' agreement, so from the first step a cell reads through the map the demos follow."""

    def __init__(self, hidden_size: int, num_heads: int, top_k: int = 8):
        super().__init__()
        self.num_heads, self.head_dim, self.top_k = num_heads, hidden_size // num_heads, top_k
        self.v_proj = Linear(hidden_size, hidden_size)
        self.choice = Linear(hidden_size, num_heads * NUM_MAPS, bias=True, init_std=0.0)
        self.agreement_gain = nn.Parameter(torch.tensor(AGREEMENT_GAIN))
        self.o_proj = Linear(hidden_size, hidden_size, init_std=0.0)

    def forward(self, h: torch.Tensor, sources: torch.Tensor, agreement: torch.Tensor | None) -> torch.Tensor:
        """sources: [B, NUM_MAPS, S] from `map_sources` (the query input's grid); agreement:
        [B, NUM_MAPS] from MapMatch, or None (no demos: the zeroed-context ablation)."""
        B, L, H = h.shape
        S, k, G, hd = sources.shape[-1], self.top_k, self.num_heads, self.head_dim
        cells = h[:, L - S:]
        if agreement is None:
            maps = torch.arange(k, device=h.device).expand(B, k)
        else:
            maps = agreement.topk(k, dim=-1).indices                              # [B, k]
        # the k candidates' choice weights, per sample: one [S, H] x [H, G k] matmul per sample
        w = self.choice.weight.view(G, NUM_MAPS, H)[:, maps].permute(1, 0, 2, 3).reshape(B, G * k, H)
        b = self.choice.bias.view(G, NUM_MAPS)[:, maps].permute(1, 0, 2)            # [B, G, k]
        logits = torch.bmm(cells, w.to(cells.dtype).transpose(1, 2)).view(B, S, G, k).float() + b[:, None].float()
        logits = MAP_LOGIT_SCALE * logits
        if agreement is not None:
            logits = logits + self.agreement_gain * agreement.gather(1, maps).float()[:, None, None, :]
        weights = torch.softmax(logits, -1)                                         # [B, S, G, k]
        v = self.v_proj(cells)
        v = torch.cat([v, v.new_zeros(B, 1, H)], dim=1).reshape(B * (S + 1), H)    # + "off the canvas"
        src = sources.gather(1, maps[:, :, None].expand(-1, -1, S))                # [B, k, S]
        flat = (src + (S + 1) * torch.arange(B, device=h.device).view(B, 1, 1)).reshape(-1)
        read = v.index_select(0, flat).view(B, k, S, G, hd)                        # what each candidate points at
        # the weighted sum over the k candidates: elementwise (a bmm of [1, k] x [k, hd] per cell and
        # head spends its time in copies)
        out = (read * weights.permute(0, 3, 1, 2).unsqueeze(-1).to(read.dtype)).sum(1).reshape(B, S, H)
        return torch.cat([h.new_zeros(B, L - S, H), self.o_proj(out)], dim=1)


class MapMatch(nn.Module):
    """How well the demos agree with each map. Every colour cell of a real demo output votes for
    each map: (1 + cost) * sim - cost, where sim is a learned similarity of its token and the
    token of the input cell the map points at (a vocab x vocab table), or -uncovered_cost when the
    map points off the input grid (a shift's vacated edge, the other copies of a tiling: a small
    cost, so that a map that reads nothing does not outrank one that explains part of the output);
    votes are averaged over the cells of each demo, then over the demos. The table starts as
    "equal tokens" (1 or 0), so a vote starts as +1 for a cell the map gets right and -cost (4) for
    one it gets wrong: a map the demos follow scores ~1, one wrong on a fraction f of the cells 1 - 5f.
    (demo_inputs, demo_labels [B, D, S], demo_mask [B, D]) -> [B, NUM_MAPS]."""

    def __init__(self, vocab_size: int, side: int):
        super().__init__()
        self.side, self.vocab_size = side, vocab_size
        self.similarity = nn.Parameter(torch.eye(vocab_size))       # [output token, input token]
        self.mismatch_cost = nn.Parameter(torch.tensor(MISMATCH_COST))
        self.uncovered_cost = nn.Parameter(torch.tensor(UNCOVERED_COST))

    def forward(self, demo_inputs: torch.Tensor, demo_labels: torch.Tensor, demo_mask: torch.Tensor,
                lengths: torch.Tensor | None = None) -> torch.Tensor:
        """`lengths`: the host's demo lengths [B, D] (the batch's `demo_lengths`): the real demo slots
        are then known without reading the device."""
        B, D, S = demo_inputs.shape
        rows = selected_rows(demo_mask.reshape(-1), lengths)                     # real demo slots only
        inputs, labels = demo_inputs.reshape(B * D, S)[rows], demo_labels.reshape(B * D, S)[rows]
        n = rows.shape[0]
        sources = map_sources(*grid_sizes(inputs, self.side), self.side)        # [n, M, S]
        # only the input grid's colour cells are read; EOS, PAD and off the canvas are "nothing" (-1)
        read = torch.where(inputs >= COLOUR_OFFSET, inputs, -1)
        read = torch.cat([read, read.new_full((n, 1), -1)], 1).gather(1, sources.reshape(n, -1)).view(n, NUM_MAPS, S)
        in_grid = read >= 0
        pair = labels.unsqueeze(1) * self.vocab_size + read.clamp_min(0)         # [n, M, S] (output, input) pair
        sim = self.similarity.reshape(-1)[pair]
        votes = torch.where(in_grid, (1 + self.mismatch_cost) * sim - self.mismatch_cost, -self.uncovered_cost)
        voters = (labels >= COLOUR_OFFSET).to(votes.dtype).unsqueeze(1)          # [n, 1, S]
        per_demo = (votes * voters).sum(-1) / voters.sum(-1).clamp_min(1.0)     # [n, M]
        total = per_demo.new_zeros(B * D, NUM_MAPS).index_copy(0, rows, per_demo).view(B, D, NUM_MAPS)
        return total.sum(1) / demo_mask.sum(1, keepdim=True).clamp_min(1).to(total.dtype)


def relabelled_agreement(demo_inputs: torch.Tensor, demo_labels: torch.Tensor, demo_mask: torch.Tensor,
                         side: int, frames: bool = False, regions: bool = False, plain: bool = False,
                         boxes: torch.Tensor | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """How well each map, followed by one colour relabelling shared by all of a puzzle's demos,
    explains its demo outputs: the share of the demo output cells whose colour is the one most often
    found with their source's colour (a cell the map points off the input grid for has source colour
    "none"). 1.0 for the map of a flip / rotation / shift + recolouring, and for the identity of a
    pure recolouring, which MapMatch's "equal tokens" does not see; no parameters, no gradient.
    frames: the FRAME_MAPS too (each demo's frame: its output's size); regions: the REGION_MAPS after them
    (boxes: the demo inputs' `region_boxes` [B * D, NUM_REGION_KINDS, 4], computed when None).
    (demo_inputs, demo_labels [B, D, S], demo_mask [B, D]) -> [B, NUM_MAPS (+ NUM_FRAME_MAPS (+
    NUM_REGION_MAPS))] in [0, 1]; plain: also the share of those cells whose colour is their source's
    (the relabelling left as it is), same shape."""
    B, D, S = demo_inputs.shape
    inputs, labels = demo_inputs.reshape(B * D, S), demo_labels.reshape(B * D, S)
    sources = map_sources(*grid_sizes(inputs, side), side)                          # [BD, M, S]
    if regions and not frames:
        raise ValueError("relabelled_agreement: the region maps come after the frame maps: frames=True")
    if frames:
        sources = torch.cat([sources, frame_footprints(inputs, torch.stack(grid_sizes(labels, side), -1), side)[0]], 1)
    if regions:
        sources = torch.cat([sources, region_footprints(inputs, side, boxes)[0]], 1)
    M = sources.shape[1]
    colour_in = torch.where(inputs >= COLOUR_OFFSET, inputs - COLOUR_OFFSET, NUM_COLOURS)   # none = 10
    colour_in = torch.cat([colour_in, colour_in.new_full((B * D, 1), NUM_COLOURS)], 1)
    read = colour_in.gather(1, sources.reshape(B * D, -1)).view(B * D, M, S)         # source colour per map
    voter = (labels >= COLOUR_OFFSET) & demo_mask.reshape(B * D, 1)                 # real demo output cells
    pair = read * NUM_COLOURS + (labels - COLOUR_OFFSET).clamp(0, NUM_COLOURS - 1).unsqueeze(1)
    counts = torch.zeros(B, M, (NUM_COLOURS + 1) * NUM_COLOURS, device=inputs.device)
    weight = voter.unsqueeze(1).expand(-1, M, -1).to(counts.dtype)
    counts = counts.scatter_add_(2, pair.view(B, D, M, S).transpose(1, 2).reshape(B, M, D * S),
                                 weight.view(B, D, M, S).transpose(1, 2).reshape(B, M, D * S))
    counts = counts.view(B, M, NUM_COLOURS + 1, NUM_COLOURS)
    total = counts.sum((-1, -2)).clamp_min(1.0)
    agreement = counts.amax(-1).sum(-1) / total
    if not plain:
        return agreement
    return agreement, counts[:, :, :NUM_COLOURS].diagonal(dim1=-2, dim2=-1).sum(-1) / total


# maps whose translation is a one-cell shift (or none): they carry the grid onto its own shape (or its
# transpose), the cells a shift vacates included; the others (one grid back) place one copy of a tiling
ONE_CELL_TRANSLATIONS = 9
COVER_CANDIDATES = 4   # map_cover: the best maps tried as pieces of a cover (a 2 x 2 tiling needs 4)
# map_cover keeps the identity first unless another map explains the demos (near-)exactly or clearly
# better: when a per-cell rule changes many cells, no map explains them and one of the 95 others fits
# by chance a little better (outline: a one-cell shift at 0.70 vs the identity's 0.68), which moved
# every cell the rule then reads. A real map with its relabelling scores 1.0.
MAP_CONSISTENT = 0.98
IDENTITY_MARGIN = 0.1


def map_footprints(h: torch.Tensor, w: torch.Tensor, side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For grids h x w [N]: -> (each map's source per cell [N, NUM_MAPS, S] (`map_sources`; S = none:
    off the input grid or off the footprint), its footprint [N, NUM_MAPS, S] bool: the cells of the
    answer it places). The footprint of the identity and of the one-cell shifts is the carried grid's
    shape (h x w, or w x h after a transposing map; the cells a shift vacates belong to the answer
    but have no source, the cells it pushes past the edge do not); of the others (one copy of a
    tiling) the cells it reads a grid cell for."""
    S = side * side
    row, col, _, _, row_in, col_in = _map_axes(h, w, side)
    src = _outer(row, col, torch.add)
    covered = _outer(row_in, col_in, torch.logical_and)   # the source is a cell of the h x w grid
    m = torch.arange(NUM_MAPS, device=h.device)
    transposed = TRANSPOSES.to(h.device)[m % NUM_DIHEDRAL]                              # [M]
    rows = torch.where(transposed, w[:, None], h[:, None])                              # [N, M]
    cols = torch.where(transposed, h[:, None], w[:, None])
    cell = torch.arange(S, device=h.device)
    rect = ((cell // side)[None, None] < rows[..., None]) & ((cell % side)[None, None] < cols[..., None])
    one_cell = (m // NUM_DIHEDRAL < ONE_CELL_TRANSLATIONS).view(1, -1, 1)
    footprint = torch.where(one_cell, rect, covered)
    return torch.where(footprint & covered, src, S), footprint


# The frame maps (`arch.cell_lookup_frame`): the input read into a frame of another size (the answer's:
# a demo's output size, the query's from models/answer_size.py), tiled (cell (r, c) reads (r mod h,
# c mod w)) or stretched (reads (r h // H, c w // W): an integer upscaling, or the nearest cell of any
# resize). They are map_cover's candidates NUM_MAPS and NUM_MAPS + 1: tilings and scalings by any
# factor, which the 96 fixed maps reach only for one extra copy.
FRAME_MAPS = ("tile_to_frame", "stretch_to_frame")
NUM_FRAME_MAPS = len(FRAME_MAPS)
# map_cover with frame maps: a map that explains the demos (MAP_CONSISTENT) and whose footprint is
# every demo output's shape outranks one as good that is not (ranks are agreements, <= 1; this is
# below IDENTITY_MARGIN). When every demo output is one colour every map "explains" it, and only a map
# that fills the output's frame lets the lookup read the pairs as aligned. (Not for a map that only
# nearly explains: a mirrored tiling is the copies of 96 maps, not the frame's plain tiling.)
SHAPE_FIT_BONUS = 0.01
# map_cover with region maps: among maps that explain the demos as well, the one that needs the least
# relabelling (its share of cells carried with their own colour) first, by at most this much: a
# one-cell answer of the chosen colour is "explained" by any cell read through a recolouring.
PLAIN_BONUS = 1e-3


def frame_footprints(tokens: torch.Tensor, frame: torch.Tensor, side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Grids [N, S] read into frames [N, 2] (height, width; 0 = none) by the FRAME_MAPS -> (each
    frame map's source per cell [N, NUM_FRAME_MAPS, S] (S = none), its footprint (the frame's cells)
    [N, NUM_FRAME_MAPS, S] bool); nothing for an empty grid or frame."""
    S = side * side
    h, w = (x.view(-1, 1) for x in grid_sizes(tokens, side))
    fh, fw = frame[:, :1], frame[:, 1:]
    cell = torch.arange(S, device=tokens.device)
    r, c = (cell // side)[None], (cell % side)[None]                                   # [1, S]
    inside = (r < fh) & (c < fw) & (h > 0) & (w > 0)                                   # [N, S]
    h1, w1 = h.clamp_min(1), w.clamp_min(1)
    tile = (r % h1) * side + c % w1
    stretch = (r * h1 // fh.clamp_min(1)) * side + c * w1 // fw.clamp_min(1)
    src = torch.where(inside[:, None], torch.stack([tile, stretch], 1), S)
    return src, inside[:, None].expand(-1, NUM_FRAME_MAPS, -1)


# The region maps (`arch.cell_lookup_box`): the answer is one box of the input read as a grid of its
# own: the bounding box of the foreground through each of the 8 flips / rotations (crop the content,
# then turn it), or, as it is, the bounding box of the cells of one kind: one colour's (1..9), the
# objects' of one size (1..8 cells; objects: 8-connected foreground cells of any colours), the largest
# objects', the smallest objects'. They are map_cover's candidates after the frame maps, first maps only
# (a box is no copy of a tiling), chosen like every map by how well they explain the demos, each demo
# reading its own box. Why generic: "the output is a part of the input" is one of ARC's commonest size
# changes (on ARC-AGI-1 evaluation answer_size's box rules fit 9 puzzles, more than any rule but the
# query's size and a constant size); which part (the content, the cells of a colour or of an object
# chosen by its size) is read from the demos, and the box is then read like the whole grid (the same
# flips, the same per-cell changes after it).
OBJECT_SIZES = 8
REGION_KINDS = (("foreground",) + tuple(f"colour_{c}" for c in range(1, NUM_COLOURS))
                + tuple(f"objects_of_size_{k}" for k in range(1, OBJECT_SIZES + 1))
                + ("largest_objects", "smallest_objects"))
NUM_REGION_KINDS = len(REGION_KINDS)
REGION_MAPS = (tuple(f"content_d{d}" for d in range(NUM_DIHEDRAL))
               + tuple(f"{kind}_box" for kind in REGION_KINDS[1:]))
NUM_REGION_MAPS = len(REGION_MAPS)


def object_sizes(tokens: torch.Tensor, side: int, labels: torch.Tensor | None = None) -> torch.Tensor:
    """Grids [N, S] -> the size of the object (8-connected foreground cells, any colours) each cell is
    part of [N, S] long, 0 off the foreground. labels: the objects' `component_labels` [N, S] when the
    caller has them (models/answer_size.py does), else they are computed here (one labelling)."""
    N, S = tokens.shape
    fg = (tokens >= COLOUR_OFFSET) & (tokens != COLOUR_OFFSET)
    if labels is None:
        labels = component_labels(torch.where(fg, 0, -1).view(N, side, side), True)
    count = torch.zeros(N, S + 1, dtype=torch.long, device=tokens.device).scatter_add_(1, labels, fg.long())
    return torch.where(fg, count.gather(1, labels), 0)


def region_boxes(tokens: torch.Tensor, side: int, sizes: torch.Tensor | None = None) -> torch.Tensor:
    """Grids [N, S] (and their cells' `object_sizes` [N, S], computed when not given) -> the bounding
    boxes [N, NUM_REGION_KINDS, 4] long (top, left, height, width) of the cells of each REGION_KINDS
    kind; height = width = 0 where there are none."""
    N, S = tokens.shape
    colour = torch.where(tokens >= COLOUR_OFFSET, tokens - COLOUR_OFFSET, -1)
    sizes = object_sizes(tokens, side) if sizes is None else sizes
    fg = colour > 0
    kinds = [fg[:, None], colour[:, None] == torch.arange(1, NUM_COLOURS, device=tokens.device).view(1, -1, 1),
             sizes[:, None] == torch.arange(1, OBJECT_SIZES + 1, device=tokens.device).view(1, -1, 1),
             (sizes == sizes.amax(-1, keepdim=True))[:, None] & fg[:, None],
             (sizes == sizes.masked_fill(~fg, S + 1).amin(-1, keepdim=True))[:, None]]
    cells = torch.cat(kinds, 1).view(N, NUM_REGION_KINDS, side, side)
    axis = torch.arange(side, device=tokens.device)
    edges = []
    for present in (cells.any(-1), cells.any(-2)):                                      # rows, columns
        first = torch.where(present, axis, side).amin(-1)
        last = torch.where(present, axis, -1).amax(-1)
        edges += [first, (last - first + 1).clamp_min(0)]
    top, height, left, width = edges
    return torch.stack([top, left, height, width], -1)


def region_footprints(tokens: torch.Tensor, side: int, boxes: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Grids [N, S] read through the REGION_MAPS (their `region_boxes` [N, NUM_REGION_KINDS, 4],
    computed when not given) -> (each region map's source per cell [N, NUM_REGION_MAPS, S] (S =
    none), its footprint (the cells of the box as the map carries it) [N, NUM_REGION_MAPS, S] bool);
    nothing where the box is empty."""
    S = side * side
    box = region_boxes(tokens, side) if boxes is None else boxes
    top, left, height, width = (x[..., None] for x in box.unbind(-1))                  # [N, R, 1]
    cell = torch.arange(S, device=tokens.device)
    r, c = cell // side, cell % side
    # the content's box through each dihedral map: the cell of the box each answer cell comes from
    sr, sc = dihedral_positions(r, c, height[:, 0, 0], width[:, 0, 0], inverse=True)     # [N, 8, S]
    content = (sr >= 0) & (sr < height[:, :1]) & (sc >= 0) & (sc < width[:, :1])
    content_src = (top[:, :1] + sr) * side + left[:, :1] + sc
    # the other kinds' boxes as they are
    kinds = (r < height[:, 1:]) & (c < width[:, 1:])                                    # [N, R - 1, S]
    kinds_src = (top[:, 1:] + r) * side + left[:, 1:] + c
    footprint = torch.cat([content, kinds], 1)
    return torch.where(footprint, torch.cat([content_src, kinds_src], 1), S), footprint


def cover_footprints(tokens: torch.Tensor, side: int, frame: torch.Tensor | None = None,
                     regions: bool = False, boxes: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`map_footprints` of grids [N, S], with frames [N, 2] the FRAME_MAPS' after them, and with
    regions (which needs the frames) the REGION_MAPS' after those (the grids' `region_boxes`: boxes,
    or computed):
    -> sources, footprints [N, NUM_MAPS (+ NUM_FRAME_MAPS (+ NUM_REGION_MAPS)), S]."""
    src, footprint = map_footprints(*grid_sizes(tokens, side), side)
    if frame is None:
        if regions:
            raise ValueError("cover_footprints: the region maps come after the frame maps: pass a frame")
        return src, footprint
    parts = [(src, footprint), frame_footprints(tokens, frame, side)]
    if regions:
        parts.append(region_footprints(tokens, side, boxes))
    return torch.cat([p[0] for p in parts], 1), torch.cat([p[1] for p in parts], 1)


def map_cover(demo_inputs: torch.Tensor, demo_labels: torch.Tensor, demo_mask: torch.Tensor, side: int,
              candidates: int = COVER_CANDIDATES, frames: bool = False, regions: bool = False,
              boxes: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The maps a puzzle's answers are read through: the `candidates` best by `relabelled_agreement`
    (ties to the lower map number; the identity first unless another map scores MAP_CONSISTENT or
    beats it by IDENTITY_MARGIN), the best always, each next one only when, on
    every real demo, it reaches output cells the ones before did not and none outside the output
    grid (a copy of a tiling, not a second reading of the same cells). -> maps [B, K] long, used
    [B, K] bool. A flip + recolouring: one map; a 2 x 1 tiling of the input and its mirror image: two.
    frames (`arch.cell_lookup_frame`): the FRAME_MAPS are candidates too (only as the first map: the
    later pieces are copies), and a map that explains the demos (MAP_CONSISTENT) and whose footprint
    is every demo output's shape gets SHAPE_FIT_BONUS (read them with `read_through`'s frame).
    regions (`arch.cell_lookup_box`, needs frames): the REGION_MAPS are first-map candidates too, and
    among maps as good the one that recolours least is first (PLAIN_BONUS); boxes: the demo inputs'
    `region_boxes` [B * D, NUM_REGION_KINDS, 4] (computed when None)."""
    B, D, S = demo_inputs.shape
    if regions and boxes is None:   # once for both reads of the demo inputs
        boxes = region_boxes(demo_inputs.reshape(B * D, S), side)
    agreement, plain = relabelled_agreement(demo_inputs, demo_labels, demo_mask, side, frames, regions, plain=True,
                                            boxes=boxes)
    M = agreement.shape[-1]
    ties = torch.arange(M, device=agreement.device) * 1e-6   # exact ties: the lower map number
    best = agreement.amax(-1)
    by_chance = (best < MAP_CONSISTENT) & (best - agreement[:, 0] < IDENTITY_MARGIN)   # [B]
    inputs = demo_inputs.reshape(B * D, S)
    output = (demo_labels.reshape(B * D, S) >= COLOUR_OFFSET)
    real = demo_mask.reshape(B * D)
    frame = torch.stack(grid_sizes(demo_labels.reshape(B * D, S), side), -1) if frames else None
    _, footprint = cover_footprints(inputs, side, frame, regions, boxes)                 # [BD, M, S]
    rank = agreement - ties
    if frames:
        fits = ((footprint == output[:, None]).all(-1) | ~real[:, None]).view(B, D, M).all(1)   # [B, M]
        rank = rank + SHAPE_FIT_BONUS * (fits & (agreement >= MAP_CONSISTENT))
    if regions:
        rank = rank + PLAIN_BONUS * plain
    rank[:, 0] = torch.where(by_chance, 2.0, rank[:, 0])   # above any agreement (<= 1): the identity first
    first = rank.argmax(-1, keepdim=True)                                               # [B, 1]
    # the next pieces are copies (the 96 maps): a frame map fills the whole frame, a region map reads one box
    fixed = rank[:, :NUM_MAPS]
    rest = torch.where(first < NUM_MAPS, fixed.scatter(1, first.clamp_max(NUM_MAPS - 1), -1.0), fixed)
    maps = torch.cat([first, rest.topk(candidates - 1, dim=-1).indices], 1)            # [B, K]
    chosen = footprint.gather(1, maps.repeat_interleave(D, 0)[..., None].expand(-1, -1, S))  # [BD, K, S]
    shape, used = chosen[:, 0], [torch.ones(B, dtype=torch.bool, device=maps.device)]
    for k in range(1, candidates):
        new = chosen[:, k] & ~shape
        fits = (new.any(-1) & ~(new & ~output).any(-1)) | ~real                         # [BD]
        use = fits.view(B, D).all(-1) & demo_mask.any(-1)
        shape = shape | (chosen[:, k] & use.repeat_interleave(D)[:, None])
        used.append(use)
    return maps, torch.stack(used, dim=1)


def read_through(tokens: torch.Tensor, maps: torch.Tensor, used: torch.Tensor, side: int,
                 frame: torch.Tensor | None = None, regions: bool = False, boxes: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Grids [N, S] read through a cover (`map_cover`'s maps [N, K] and used [N, K]): each cell's
    source (the first used map that reads a grid cell for it; S = none) [N, S] and the answer's shape
    (the used maps' footprints) [N, S] bool. frame [N, 2]: the frame the FRAME_MAPS read into (a
    cover with frame maps needs it; None or 0 x 0 where the answer's size is not known: they read nothing);
    regions: the cover's map numbers include the REGION_MAPS (map_cover's regions; boxes: the grids'
    `region_boxes`, computed when None)."""
    N, S = tokens.shape
    frame = tokens.new_zeros(N, 2) if frame is None else frame
    src_all, footprint = cover_footprints(tokens, side, frame, regions, boxes)
    index = maps[..., None].expand(-1, -1, S)
    src_k, foot_k = src_all.gather(1, index), footprint.gather(1, index) & used[..., None]   # [N, K, S]
    src = torch.full_like(tokens, S)
    for k in range(maps.shape[1]):
        src = torch.where((src == S) & used[:, k:k + 1] & (src_k[:, k] < S), src_k[:, k], src)
    return src, foot_k.any(1)
