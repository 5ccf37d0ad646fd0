"""`arch.cell_lookup_box` (models/grid_maps.py REGION_MAPS): a box of the input read as a grid of its own.
- region_boxes finds the foreground's, each colour's and the objects' of each size (largest,
  smallest) bounding boxes, none for an absent kind, and answer_size's labelling gives the same;
- the content maps read the foreground's box through each of the 8 flips / rotations, the other maps
  their kind's box as it is, nothing where the box is empty;
- map_cover takes the region map that explains the demos (a crop + rotation, one colour's part cut
  out, the object of a size cut out), also when every answer is a single cell, which any cell read
  through a recolouring explains too (the least relabelling first); without regions it is what it was;
- answer_size's rules include one colour's box and one object size's;
- in the model the option needs cell_lookup_frame, a model with it equals the model without it at
  step 0, the lookup answers a crop + flip and a colour cut out right, and every lookup parameter
  gets a gradient at every ACT step."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dataset.augment import dihedral
from dataset.tokens import COLOUR_OFFSET
from models.answer_size import SIZE_RULES, answer_size, size_rule
from models.cell_lookup import CellLookup
from models.grid_maps import (NUM_FRAME_MAPS, NUM_MAPS, REGION_KINDS, REGION_MAPS, map_cover, region_boxes,
                              region_footprints)
from models.recursive_reasoning.etrm import TRMWithEncoder
from tests.helpers import assert_lookup_option_in_the_model, grid_tokens, tiny_config

torch.set_num_threads(2)
SIDE = 8
FIRST_REGION = NUM_MAPS + NUM_FRAME_MAPS
CONTENT = [FIRST_REGION + REGION_MAPS.index(f"content_d{d}") for d in range(8)]
COLOUR_BOX = {c: FIRST_REGION + REGION_MAPS.index(f"colour_{c}_box") for c in range(1, 10)}
SIZE_BOX = {k: FIRST_REGION + REGION_MAPS.index(f"objects_of_size_{k}_box") for k in range(1, 9)}


def _t(*grids) -> torch.Tensor:
    return grid_tokens(grids, SIDE)


def _read(grid: np.ndarray, m: int) -> np.ndarray:
    """The colours region map m (an index into REGION_MAPS) reads, cropped to its footprint's box (an
    empty array where the footprint is empty); asserts the footprint is that box."""
    src, foot = region_footprints(_t(grid), SIDE)
    foot = foot[0, m].view(SIDE, SIDE).numpy()
    read = torch.cat([_t(grid)[0], torch.tensor([-1])])[src[0, m]].view(SIDE, SIDE).numpy() - COLOUR_OFFSET
    h, w = int(foot[:, 0].sum()), int(foot[0].sum())
    assert foot.sum() == h * w and foot[:h, :w].all()
    return read[:h, :w]


GRID = np.array([[0, 0, 0, 0, 0, 0],
                 [0, 0, 3, 3, 0, 0],
                 [0, 5, 3, 0, 0, 0],
                 [0, 0, 0, 0, 7, 0],
                 [0, 0, 0, 0, 0, 0]])


def test_region_boxes():
    """GRID's objects (8-connected, any colours): the 5 + 3s (4 cells), the 7 (1 cell)."""
    box = {kind: b.tolist() for kind, b in zip(REGION_KINDS, region_boxes(_t(GRID), SIDE)[0])}
    assert box["foreground"] == [1, 1, 3, 4]                            # rows 1-3, cols 1-4
    assert box["colour_3"] == [1, 2, 2, 2] and box["colour_5"] == [2, 1, 1, 1] and box["colour_7"] == [3, 4, 1, 1]
    assert box["objects_of_size_4"] == [1, 1, 2, 3] and box["objects_of_size_1"] == [3, 4, 1, 1]
    assert box["largest_objects"] == box["objects_of_size_4"] and box["smallest_objects"] == box["objects_of_size_1"]
    for kind in ("colour_1", "colour_9", "objects_of_size_2", "objects_of_size_8"):   # none: no box
        assert box[kind][2:] == [0, 0]
    # answer_size labels the grids once and hands the same boxes on (the model reads them from there)
    grids = _t(GRID, GRID[::-1], GRID.T)
    d_in, d_out, mask = grids[None, :2], grids[None, :2], torch.ones(1, 2, dtype=torch.bool)
    torch.testing.assert_close(answer_size(d_in, d_out, mask, grids[2:], SIDE, with_boxes=True)[2],
                               region_boxes(grids, SIDE))


def test_region_maps_read_the_content_turned_and_one_colour_cut_out():
    content = GRID[1:4, 1:5]
    for d in range(8):
        np.testing.assert_array_equal(_read(GRID, REGION_MAPS.index(f"content_d{d}")), dihedral(content, d))
    np.testing.assert_array_equal(_read(GRID, REGION_MAPS.index("colour_3_box")), [[3, 3], [3, 0]])
    np.testing.assert_array_equal(_read(GRID, REGION_MAPS.index("colour_7_box")), [[7]])
    assert _read(GRID, REGION_MAPS.index("colour_1_box")).size == 0     # absent colour: nothing
    assert _read(np.zeros((3, 3), int), REGION_MAPS.index("content_d0")).size == 0   # no content: nothing


def _objects(rng, colours, side=7):
    """A grid with one object per colour (a 1-3 cell bar), not touching."""
    while True:
        g = np.zeros((side, side), int)
        ok = True
        for c in colours:
            n, (r, k) = int(rng.integers(1, 4)), rng.integers(0, side, 2)
            cells = [(r, k + i) for i in range(n)] if rng.random() < 0.5 else [(r + i, k) for i in range(n)]
            if any(not (0 <= a < side and 0 <= b < side) for a, b in cells) or any(
                    g[max(a - 1, 0):a + 2, max(b - 1, 0):b + 2].any() for a, b in cells):
                ok = False
                break
            for a, b in cells:
                g[a, b] = c
        if ok:
            return g


def _sized(rng, sizes, side=7):
    """Bars of the given lengths (distinct random colours), not touching."""
    while True:
        g = np.zeros((side, side), int)
        colours = rng.permutation(np.arange(1, 10))[:len(sizes)]
        for n, c in zip(sizes, colours):
            r, k = (int(x) for x in rng.integers(0, side, 2))
            cells = [(r, k + i) for i in range(n)] if rng.random() < 0.5 else [(r + i, k) for i in range(n)]
            if any(not (0 <= a < side and 0 <= b < side) or g[max(a - 1, 0):a + 2, max(b - 1, 0):b + 2].any()
                   for a, b in cells):
                break
            for a, b in cells:
                g[a, b] = c
        else:
            return g


def _cut_size(g, n):
    """The one object of n cells cut out (bars: its colour's box)."""
    colour = next(c for c in range(1, 10) if (g == c).sum() == n)
    return _cut(g, colour)


def _cut(g, c):
    rs, cs = np.nonzero(g == c)
    box = g[rs.min():rs.max() + 1, cs.min():cs.max() + 1]
    return np.where(box == c, c, 0)


def _puzzle(pairs):
    ins, outs = zip(*pairs)
    return _t(*ins)[None], _t(*outs)[None], torch.ones(1, len(pairs), dtype=torch.bool)


def test_map_cover_takes_the_region_map_that_explains_the_demos():
    rng = np.random.default_rng(0)
    cover = lambda d, regions=True: map_cover(*d, SIDE, frames=True, regions=regions)[0][0, 0].item()  # noqa: E731
    for d in (1, 2, 4, 5):   # crop, then turn
        grids = [_objects(rng, [2, 4, 6]) for _ in range(3)]
        demos = _puzzle([(g, dihedral(g[np.nonzero(g)[0].min():np.nonzero(g)[0].max() + 1,
                                        np.nonzero(g)[1].min():np.nonzero(g)[1].max() + 1], d)) for g in grids])
        assert cover(demos) == CONTENT[d]
        assert cover(demos, False) < FIRST_REGION                         # without regions: as before
    grids = [_objects(rng, [1, 4, 8, 9]) for _ in range(3)]
    assert cover(_puzzle([(g, _cut(g, 8)) for g in grids])) == COLOUR_BOX[8]
    # one-cell answers of the chosen colour: a frame map reading any one cell through a recolouring
    # explains them as well; the colour's box carries its colour unchanged and is taken
    grids = [np.pad(np.array([[c, 0, 6]]), ((k, 1), (1, k))) for k, c in ((0, 1), (1, 3), (2, 5))]
    assert cover(_puzzle([(g, np.array([[6]])) for g in grids])) == COLOUR_BOX[6]
    # the object of 3 cells, whatever its colour (the others have 1, 2 or 4 cells)
    grids = [_sized(rng, [1, 3, 2, 4]) for _ in range(3)]
    assert cover(_puzzle([(g, _cut_size(g, 3)) for g in grids])) == SIZE_BOX[3]


def test_answer_size_reads_one_colours_box():
    """Colour 3's part is 1 x 2, 3 x 1, 2 x 2 in the demos (the grids all 5 x 5, the content's box
    and the counts differ): only its box gives every demo its size, and the query's is 1 x 3."""
    grids = []
    for cells in ([(0, 0), (0, 1)], [(1, 3), (2, 3), (3, 3)], [(3, 0), (3, 1), (4, 1)], [(2, 1), (2, 2), (2, 3)]):
        g = np.zeros((5, 5), int)
        g[4, 4] = 2
        for r, c in cells:
            g[r, c] = 3
        grids.append(g)
    d_in, d_out, mask = _puzzle([(g, _cut(g, 3)) for g in grids[:3]])
    rule, fits, _, _, _ = size_rule(d_in, d_out, mask, SIDE)
    assert fits.item() and SIZE_RULES[rule.item()] == "colour_3_box"
    size, known = answer_size(d_in, d_out, mask, _t(grids[3]), SIDE)
    assert known.item() and size[0].tolist() == [1, 3]
    # the object of 3 cells, another colour in each demo
    grids = [_sized(np.random.default_rng(k), [1, 3, 2, 4]) for k in range(4)]
    d_in, d_out, mask = _puzzle([(g, _cut_size(g, 3)) for g in grids[:3]])
    assert SIZE_RULES[size_rule(d_in, d_out, mask, SIDE)[0].item()] == "objects_of_size_3_box"
    size, known = answer_size(d_in, d_out, mask, _t(grids[3]), SIDE)
    assert known.item() and tuple(size[0].tolist()) == _cut_size(grids[3], 3).shape


def _lookup_answer(lookup, demos, query):
    d_in, d_out, mask = _puzzle(demos)
    q = _t(query)
    size, known = answer_size(d_in, d_out, mask, q, SIDE)
    cover = map_cover(d_in, d_out, mask, SIDE, frames=True, regions=True)
    with torch.no_grad():
        logits = lookup(q, d_in, d_out, mask, cover, size * known[:, None])[1][0].view(SIDE, SIDE, -1)
    return logits[..., COLOUR_OFFSET:COLOUR_OFFSET + 10].argmax(-1).numpy()


def test_the_lookup_answers_a_crop_and_turn_and_a_colour_cut_out():
    torch.manual_seed(0)
    lookup = CellLookup(64, 12, SIDE, sharpness=40.0, colour_share=2.0, regions=True)
    with torch.no_grad():
        lookup.vote_gain.fill_(1.0)
    rng = np.random.default_rng(2)
    crop = lambda g: g[np.nonzero(g)[0].min():np.nonzero(g)[0].max() + 1,  # noqa: E731
                       np.nonzero(g)[1].min():np.nonzero(g)[1].max() + 1]
    grids = [_objects(rng, [2, 4, 6]) for _ in range(4)]
    want = dihedral(crop(grids[3]), 5)
    got = _lookup_answer(lookup, [(g, dihedral(crop(g), 5)) for g in grids[:3]], grids[3])
    np.testing.assert_array_equal(got[:want.shape[0], :want.shape[1]], want)
    grids = [_objects(rng, [1, 4, 8, 9]) for _ in range(4)]
    want = _cut(grids[3], 8)
    got = _lookup_answer(lookup, [(g, _cut(g, 8)) for g in grids[:3]], grids[3])
    np.testing.assert_array_equal(got[:want.shape[0], :want.shape[1]], want)


def test_in_the_model():
    with pytest.raises(ValueError, match="cell_lookup_frame"):
        TRMWithEncoder(tiny_config(cell_lookup=True, cell_lookup_map=True, cell_lookup_box=True))
    rng = np.random.default_rng(3)
    grids = [np.pad(rng.integers(1, 10, (2, 3)), ((k % 2, 1), (1, k % 3))) for k in range(4)]
    flip = lambda g: dihedral(g[np.nonzero(g)[0].min():, np.nonzero(g)[1].min():][:2, :3], 5)  # noqa: E731
    assert_lookup_option_in_the_model("cell_lookup_box", dict(cell_lookup=True, cell_lookup_map=True,
                                                              cell_lookup_frame=True), 6, grids, flip)
