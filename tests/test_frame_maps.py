"""`arch.cell_lookup_frame` (models/grid_maps.py FRAME_MAPS): the input read into the answer's frame,
tiled or stretched, as a candidate map of cell_lookup's cover.
- the frame maps read a grid tiled / stretched into a frame of any size, and nothing into none;
- map_cover takes a frame map when it explains the demos (a scaling, a tiling by 3, an output of one
  colour, which every map "explains" but only a frame map fills), never as a second piece of a
  cover (a mirrored tiling stays the 96 maps' copies), and without frames is what it was;
- the lookup reads the query into its frame: a stretch + recolouring and a one-colour answer of
  another size are voted right, and an unknown frame gets no vote;
- in the model the cover and the query's frame come from the demos (map_cover + answer_size), the
  option needs cell_lookup_map, and a model with it equals the model without it at step 0."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dataset.tokens import COLOUR_OFFSET
from models.answer_size import answer_size
from models.cell_lookup import CellLookup
from models.grid_maps import NUM_MAPS, frame_footprints, map_cover, read_through, relabelled_agreement
from models.recursive_reasoning.etrm import TRMWithEncoder
from tests.helpers import assert_lookup_option_in_the_model, grid_tokens, tiny_config

torch.set_num_threads(2)
SIDE = 8
TILE, STRETCH = NUM_MAPS, NUM_MAPS + 1
DOWN_ONE_GRID_FLIP_UD = 8 * 9 + 6   # the 96 maps' mirrored copy below (tests/test_cell_lookup.py)


def _t(*grids) -> torch.Tensor:
    return grid_tokens(grids, SIDE)


def _read(grid: np.ndarray, frame: tuple[int, int], m: int) -> np.ndarray:
    """The colours frame map m reads for the frame's cells (-1: none), [SIDE, SIDE]."""
    src, foot = frame_footprints(_t(grid), torch.tensor([frame]), SIDE)
    tokens = torch.cat([_t(grid), torch.tensor([[-1]])], 1)
    read = torch.where(foot[0, m], tokens[0, src[0, m]] - COLOUR_OFFSET, -1)
    return read.view(SIDE, SIDE).numpy()


def _frame(h: int, w: int) -> np.ndarray:
    return (np.arange(SIDE)[:, None] < h) & (np.arange(SIDE)[None] < w)


def test_frame_maps_tile_and_stretch_into_any_frame():
    g = np.array([[1, 2, 3], [4, 5, 6]])
    for frame, tile, stretch in (((4, 6), np.tile(g, (2, 2)), g.repeat(2, 0).repeat(2, 1)),
                                 ((6, 3), np.tile(g, (3, 1)), g.repeat(3, 0)),
                                 ((2, 3), g, g),                                  # its own size: the identity
                                 ((3, 2), np.tile(g, (2, 1))[:3, :2], g[[0, 0, 1]][:, [0, 1]])):   # nearest cells
        h, w = frame
        for m, want in ((0, tile), (1, stretch)):
            got = _read(g, frame, m)
            np.testing.assert_array_equal(got[:h, :w], want)
            assert (got[~_frame(h, w)] == -1).all()
    assert (_read(g, (0, 0), 0) == -1).all() and (_read(g, (0, 0), 1) == -1).all()   # no frame: nothing


def _demos(rng, outputs_of, n=3, shapes=((2, 2), (3, 2), (2, 1))):
    grids = [rng.integers(0, 10, shapes[i % len(shapes)]) for i in range(n)]
    return _t(*grids)[None], _t(*[outputs_of(g) for g in grids])[None], torch.ones(1, n, dtype=torch.bool)


def test_map_cover_takes_a_frame_map_that_explains_the_demos():
    rng = np.random.default_rng(0)
    cover = lambda d, frames=True: map_cover(*d, SIDE, frames=frames)  # noqa: E731
    stretch = _demos(rng, lambda g: (g.repeat(2, 0).repeat(3, 1) + 1) % 10)   # x2 / x3 + a recolouring
    tile3 = _demos(rng, lambda g: np.tile(g, (1, 3)))
    one_colour = _demos(rng, lambda g: np.full((1, int((g > 4).sum()) or 1), 4))   # a bar of 4s, its length counted
    for demos, want in ((stretch, STRETCH), (tile3, TILE), (one_colour, TILE)):
        maps, used = cover(demos)
        assert maps[0, 0] == want and used.tolist() == [[True, False, False, False]]
        assert (cover(demos, False)[0] < NUM_MAPS).all()        # without frames: the 96 maps, as before
    # a one-colour output: every map explains it (agreement 1); the identity does not fill the frame
    assert cover(one_colour, False)[0][0, 0] == 0
    # a mirrored tiling: the 96 maps' copies. The frame's plain tiling explains these demos a little
    # better than either copy (its first row is right in the mirrored half too) but is no second piece
    # of the cover: it reads the whole frame again
    mirrored = _demos(np.random.default_rng(4), lambda g: np.concatenate([g, g[::-1]]), shapes=((3, 3), (3, 2)))
    agreement = relabelled_agreement(*mirrored, SIDE, frames=True)[0]
    assert agreement[TILE] > max(agreement[0], agreement[DOWN_ONE_GRID_FLIP_UD])
    maps, used = cover(mirrored)
    assert sorted(maps[used].tolist()) == [0, DOWN_ONE_GRID_FLIP_UD]


def test_the_lookup_reads_the_query_into_its_frame():
    """A stretch x2 then a recolouring (1 -> 5), and a one-colour bar whose length the demos set: the
    query read into its frame (what answer_size gives) is voted right; with no frame nothing is."""
    torch.manual_seed(0)
    lookup = CellLookup(64, 12, SIDE, sharpness=40.0, colour_share=2.0)
    with torch.no_grad():
        lookup.vote_gain.fill_(1.0)
    rng = np.random.default_rng(1)
    recolour = lambda g: np.where(g == 1, 5, g)  # noqa: E731
    query = np.array([[1, 0, 3], [1, 2, 0]])
    for rule, frame, want in ((lambda g: recolour(g.repeat(2, 0).repeat(2, 1)), (4, 6),
                               recolour(query.repeat(2, 0).repeat(2, 1))),
                              (lambda g: np.full((1, int((g > 0).sum())), 4), (1, 4), np.full((1, 4), 4))):
        grids = [rng.integers(0, 4, shape) for shape in ((2, 3), (3, 2), (3, 3))]   # the query's colours
        d_in, d_out, mask = _t(*grids)[None], _t(*[rule(g) for g in grids])[None], torch.ones(1, 3, dtype=torch.bool)
        size, known = answer_size(d_in, d_out, mask, _t(query), SIDE)
        assert known.item() and tuple(size[0].tolist()) == frame
        cover = map_cover(d_in, d_out, mask, SIDE, frames=True)
        with torch.no_grad():
            logits = lookup(_t(query), d_in, d_out, mask, cover, size)[1][0].view(SIDE, SIDE, -1)
            blind = lookup(_t(query), d_in, d_out, mask, cover, torch.zeros(1, 2, dtype=torch.long))[1]
        h, w = frame
        np.testing.assert_array_equal(logits[:h, :w, COLOUR_OFFSET:].argmax(-1).numpy(), want)
        assert logits[~torch.from_numpy(_frame(h, w))].abs().max() == 0     # nothing outside the frame
        assert blind.abs().max() == 0                                        # unknown frame: no vote


def test_in_the_model_the_cover_and_the_frame_come_from_the_demos():
    with pytest.raises(ValueError, match="cell_lookup_map"):
        TRMWithEncoder(tiny_config(cell_lookup=True, cell_lookup_frame=True))
    rng = np.random.default_rng(0)
    grids = [rng.integers(0, 10, (2, 2 + i % 2)) for i in range(4)]
    assert_lookup_option_in_the_model("cell_lookup_frame", dict(cell_lookup=True, cell_lookup_map=True), 6, grids,
                                      lambda g: g.repeat(2, 0).repeat(2, 1))   # a stretch x2


def test_read_through_without_a_frame_reads_nothing_through_a_frame_map():
    g = _t(np.array([[1, 2], [3, 4]]))
    src, shape = read_through(g, torch.tensor([[STRETCH]]), torch.tensor([[True]]), SIDE)
    assert (src == SIDE * SIDE).all() and not shape.any()
    src, shape = read_through(g, torch.tensor([[STRETCH]]), torch.tensor([[True]]), SIDE, torch.tensor([[4, 4]]))
    assert shape.sum() == 16 and (src < SIDE * SIDE).sum() == 16
