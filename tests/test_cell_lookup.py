"""`arch.cell_lookup` (models/cell_lookup.py): every query cell reads what the demo cells that look
like it became.
- on hand-made grids each query cell reads the change of the demo cells with its description
  (its own cell when the query is a demo's input), through the embedding path and as the answer
  (the vote path: "unchanged" votes for the cell's own colour), pairs whose output changes the size
  and masked demo slots are never read, and a puzzle with no aligned pair adds nothing;
- a model with it equals the model without it at step 0, every lookup parameter gets gradient on
  every ACT step, and the Hydra config builds and steps."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from dataset.tokens import COLOUR_OFFSET
from models.cell_lookup import UNCHANGED, CellLookup
from models.grid_maps import map_cover, relabelled_agreement
from models.recursive_reasoning.etrm import TRMWithEncoder
from tests.helpers import assert_gradient_every_act_step, build_and_step, grid_tokens, make_batch, tiny_config

torch.set_num_threads(2)
SIDE, H = 6, 64

# lone cells stay, cells with a 4-neighbour of their colour become 5 (a crowd-like rule)
A_IN = np.array([[1, 1, 0, 2],
                 [0, 0, 0, 0],
                 [3, 0, 4, 4]])
A_OUT = np.array([[5, 5, 0, 2],
                  [0, 0, 0, 0],
                  [3, 0, 5, 5]])
B_IN = np.array([[0, 7, 0],
                 [7, 7, 0]])
B_OUT = np.array([[0, 5, 0],
                  [5, 5, 0]])


def _t(*grids: np.ndarray) -> torch.Tensor:
    return grid_tokens(grids, SIDE)


def _expected_change(grid_in: np.ndarray, grid_out: np.ndarray) -> np.ndarray:
    return np.where(grid_out == grid_in, UNCHANGED, 1 + grid_out)


def _read(lookup: CellLookup, query: np.ndarray, demos: list[tuple[np.ndarray, np.ndarray]], mask: list[bool],
          chosen_map: int | None = None):
    """-> the change class each query cell reads through the embedding path (o_proj = identity,
    nearest change embedding), the answer the vote path gives (argmax colour), both [h, w], and the
    two paths' raw outputs [S, H] / [S, vocab]."""
    with torch.no_grad():
        lookup.o_proj.weight.copy_(torch.eye(H))
        lookup.vote_gain.fill_(1.0)
        d_in = _t(*[i for i, _ in demos]).unsqueeze(0)
        d_out = _t(*[o for _, o in demos]).unsqueeze(0)
        cover = None if chosen_map is None else (torch.tensor([[chosen_map]]), torch.tensor([[True]]))
        emb, logits = (t[0] for t in lookup(_t(query), d_in, d_out, torch.tensor([mask]), cover))
        cls = (torch.nn.functional.normalize(emb, dim=-1) @
               torch.nn.functional.normalize(lookup.change.weight, dim=-1).T).argmax(-1)
        answer = logits[:, COLOUR_OFFSET:].argmax(-1)
    h, w = query.shape
    return cls.view(SIDE, SIDE)[:h, :w].numpy(), answer.view(SIDE, SIDE)[:h, :w].numpy(), emb, logits


def _lookup(seed: int = 0) -> CellLookup:
    torch.manual_seed(seed)
    return CellLookup(H, 12, SIDE, sharpness=40.0)   # sharp: the read is the best-matching cells'


def test_query_reads_the_change_of_the_demo_cells_like_it():
    lookup = _lookup()
    # the query is demo A's input: every cell's best match is itself
    for query, answer in ((A_IN, A_OUT), (B_IN, B_OUT)):
        cls, voted, _, _ = _read(lookup, query, [(A_IN, A_OUT), (B_IN, B_OUT)], [True, True])
        np.testing.assert_array_equal(cls, _expected_change(query, answer))
        np.testing.assert_array_equal(voted, answer)     # "unchanged" is the cell's own colour


def test_size_changing_pairs_and_masked_demos_are_not_read():
    lookup = _lookup()
    everything_nine = np.full_like(A_IN, 9)
    crop = np.array([[9]])                         # a pair whose output has another shape
    demos = [(B_IN, B_OUT), (A_IN, crop), (A_IN, everything_nine)]
    cls, voted, _, _ = _read(lookup, A_IN, demos, [True, True, False])  # the exact matches are in pairs 2 and 3
    assert not (cls == 1 + 9).any() and not (voted == 9).any(), "read a size-changing pair or a masked demo"
    # only size-changing pairs: nothing is added
    _, _, emb, logits = _read(lookup, A_IN, [(A_IN, crop)], [True])
    assert emb.abs().max() == 0 and logits.abs().max() == 0
    # off the grid: nothing either; the vote only touches colour tokens
    _, _, emb, logits = _read(lookup, A_IN, [(A_IN, A_OUT)], [True])
    off = torch.ones(SIDE, SIDE, dtype=torch.bool)
    off[:3, :4] = False
    for out in (emb, logits):
        out = out.view(SIDE, SIDE, -1)
        assert out[off].abs().max() == 0 and out[~off].abs().max() > 0
    assert logits[:, :COLOUR_OFFSET].abs().max() == 0


# models/grid_maps.py map numbers (translation x 8 + dihedral): flip left-right, rot90, read one cell to the right
FLIP_LR, ROT90, SHIFT_LEFT, SHIFT_RIGHT = 5, 1, 8 * 4, 8 * 3


def test_relabelled_agreement_finds_the_map_and_the_recolouring():
    rng = np.random.default_rng(0)
    grids = [rng.integers(0, 10, (3, 4)) for _ in range(3)]
    relabel = lambda g: (g + 3) % 10  # noqa: E731
    mask = torch.tensor([[True, True, True]])
    for move, m in ((lambda g: g, 0), (relabel, 0), (np.fliplr, FLIP_LR), (lambda g: relabel(np.fliplr(g)), FLIP_LR)):
        outputs = [move(g) for g in grids]
        agreement = relabelled_agreement(_t(*grids)[None], _t(*outputs)[None], mask, SIDE)[0]
        assert agreement.argmax() == m and agreement[m] == 1.0
        if m:
            assert agreement[0] < 0.9     # the identity does not explain a flip
        # a masked demo slot, whatever it holds, changes nothing
        junk = mask.clone()
        junk[0, 2] = False
        outputs_junk = outputs[:2] + [rng.integers(0, 10, (3, 4))]
        torch.testing.assert_close(relabelled_agreement(_t(*grids)[None], _t(*outputs_junk)[None], junk, SIDE),
                                   relabelled_agreement(_t(*grids[:2], grids[2])[None], _t(*outputs[:2], outputs[2])[None],
                                                        junk, SIDE))


DOWN_ONE_GRID_FLIP_UD = 8 * 9 + 6   # one grid height down, flipped upside down: the mirrored copy below


def test_map_cover_takes_the_copies_of_a_tiling_and_nothing_else():
    rng = np.random.default_rng(1)
    grids = [rng.integers(0, 10, (2, 3)) for _ in range(3)]
    mask = torch.tensor([[True, True, True]])
    cover = lambda outputs: map_cover(_t(*grids)[None], _t(*outputs)[None], mask, SIDE)  # noqa: E731
    # the input above its mirror image (+ a recolouring): two maps, the identity and the mirrored copy
    maps, used = cover([(np.concatenate([g, g[::-1]]) + 1) % 10 for g in grids])
    assert sorted(maps[used].tolist()) == [0, DOWN_ONE_GRID_FLIP_UD]
    # a flip, a recolouring in place: one map (no other map reaches an output cell the first did not)
    for outputs, want in (([np.fliplr(g) for g in grids], FLIP_LR), ([(g + 3) % 10 for g in grids], 0)):
        maps, used = cover(outputs)
        assert maps[0, 0] == want and used.tolist() == [[True, False, False, False]]
    # a masked demo slot does not veto a copy
    junk = torch.tensor([[True, True, False]])
    outputs = [np.concatenate([g, g[::-1]]) for g in grids[:2]] + [grids[2]]
    maps, used = map_cover(_t(*grids)[None], _t(*outputs)[None], junk, SIDE)
    assert sorted(maps[used].tolist()) == [0, DOWN_ONE_GRID_FLIP_UD]


def test_map_cover_keeps_the_identity_when_another_map_fits_only_by_chance():
    """A per-cell rule that changes many cells (an 8-neighbour outline) is explained by no map, and a
    one-cell shift fits it a little better than the identity by chance (0.65 vs 0.60): the cover keeps
    the identity, or every cell the rule reads would be moved. A map that explains the demos clearly
    better (a flip with a few cells changed) is still taken."""
    from dataset.synthetic_families import _outline_apply
    side = 8
    grids = [np.array([[0, 0, 0, 0, 0], [0, 0, 0, 0, 7], [7, 0, 0, 7, 7], [7, 0, 0, 0, 0]] + [[0] * 5] * 4),
             np.array([[0, 0, 0, 0, 0, 0], [0, 7, 7, 0, 0, 0], [7, 7, 0, 0, 0, 0], [0, 0, 0, 7, 7, 0]]),
             np.array([[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 7, 7], [0, 0, 0, 0]])]
    mask = torch.ones(1, 3, dtype=torch.bool)
    outline = [_outline_apply({"colour": 6, "nbhd": 8}, g) for g in grids]
    agreement = relabelled_agreement(grid_tokens(grids, side)[None], grid_tokens(outline, side)[None], mask, side)[0]
    assert agreement.argmax() != 0 and agreement.max() - agreement[0] < 0.1   # the chance fit the cover must not take
    maps, used = map_cover(grid_tokens(grids, side)[None], grid_tokens(outline, side)[None], mask, side)
    assert maps[0, 0] == 0 and used.tolist() == [[True, False, False, False]]
    # a flip, then one cell of each demo recoloured: explained by the flip far better than by the identity
    rng = np.random.default_rng(0)
    grids = [rng.integers(1, 10, (5, 5)) for _ in range(3)]
    flipped = [np.fliplr(g).copy() for g in grids]
    for f in flipped:
        f[0, 0] = 0
    agreement = relabelled_agreement(grid_tokens(grids, side)[None], grid_tokens(flipped, side)[None], mask, side)[0]
    assert agreement[FLIP_LR] < 0.98
    maps, _ = map_cover(grid_tokens(grids, side)[None], grid_tokens(flipped, side)[None], mask, side)
    assert maps[0, 0] == FLIP_LR


def test_read_through_the_chosen_map():
    """cell_lookup_map: a flip or a rotation then a recolouring (1 -> 5) is read like a change in place
    once every grid is read through the map; without the map the vote is not the answer; the
    identity map changes nothing. (The rule recolours by colour alone: the lookup here weighs the colour
    over the grid features, so that what is tested is the map, not which random features match.)"""
    torch.manual_seed(0)
    lookup = CellLookup(H, 12, SIDE, sharpness=40.0, colour_share=2.0)
    recolour = lambda g: np.where(g == 1, 5, g)  # noqa: E731
    for m, move in ((FLIP_LR, np.fliplr), (ROT90, np.rot90)):
        demos = [(g, recolour(move(g))) for g in (A_IN, B_IN)]
        query = np.array([[1, 0, 3], [1, 2, 0]])   # the demos' kinds of cells, another layout
        want = recolour(move(query))
        answer = lambda logits: logits[:, COLOUR_OFFSET:].argmax(-1).view(SIDE, SIDE)[:want.shape[0], :want.shape[1]]  # noqa: E731
        np.testing.assert_array_equal(answer(_read(lookup, query, demos, [True, True], chosen_map=m)[3]), want)
        assert not np.array_equal(answer(_read(lookup, query, demos, [True, True])[3]), want)
    # a shift (content one cell left, the vacated right column becomes 0) then the recolouring: every
    # cell that has a source is answered; the vacated column has none and gets no vote
    shift_left = lambda g: np.concatenate([g[:, 1:], np.zeros_like(g[:, :1])], 1)  # noqa: E731
    demos = [(g, recolour(shift_left(g))) for g in (A_IN, B_IN)]
    query = np.array([[1, 0, 3], [1, 2, 0]])
    logits = _read(lookup, query, demos, [True, True], chosen_map=SHIFT_LEFT)[3].view(SIDE, SIDE, -1)
    np.testing.assert_array_equal(logits[:2, :2, COLOUR_OFFSET:].argmax(-1).numpy(), recolour(query[:, 1:]))
    assert logits[:2, 2].abs().max() == 0 and logits[:2, :2].abs().max() > 0
    # content one cell right: the vacated column 0 and the column pushed past the edge get no vote
    shift_right = lambda g: np.concatenate([np.zeros_like(g[:, :1]), g[:, :-1]], 1)  # noqa: E731
    demos = [(g, recolour(shift_right(g))) for g in (A_IN, B_IN)]
    logits = _read(lookup, query, demos, [True, True], chosen_map=SHIFT_RIGHT)[3].view(SIDE, SIDE, -1)
    np.testing.assert_array_equal(logits[:2, 1:3, COLOUR_OFFSET:].argmax(-1).numpy(), recolour(query[:, :2]))
    assert logits[:, 0].abs().max() == 0 and logits[:, 3:].abs().max() == 0
    # maps of a cover that reach the same cell: the first one's source counts
    both = (torch.tensor([[0, SHIFT_RIGHT]]), torch.tensor([[True, True]]))
    carried = lookup._through_map(_t(query), torch.zeros(1, SIDE * SIDE, 1), *both)[0]
    np.testing.assert_array_equal(carried.view(SIDE, SIDE)[:2, :3].numpy() - COLOUR_OFFSET, query)
    # a tiling: the input above its mirror image, then the recolouring; read through both copies
    tile = lambda g: np.concatenate([g, g[::-1]])  # noqa: E731
    demos = [(g, recolour(tile(g))) for g in (A_IN, B_IN)]
    query = np.array([[1, 0, 3], [1, 2, 0]])
    d_in, d_out = _t(*[i for i, _ in demos]).unsqueeze(0), _t(*[o for _, o in demos]).unsqueeze(0)
    cover = map_cover(d_in, d_out, torch.tensor([[True, True]]), SIDE)
    with torch.no_grad():
        lookup.vote_gain.fill_(1.0)
        logits = lookup(_t(query), d_in, d_out, torch.tensor([[True, True]]), cover)[1][0].view(SIDE, SIDE, -1)
    np.testing.assert_array_equal(logits[:4, :3, COLOUR_OFFSET:].argmax(-1).numpy(), recolour(tile(query)))
    assert logits[4:].abs().max() == 0 and logits[:, 3:].abs().max() == 0
    plain = _read(lookup, A_IN, [(A_IN, A_OUT), (B_IN, B_OUT)], [True, True])
    identity = _read(lookup, A_IN, [(A_IN, A_OUT), (B_IN, B_OUT)], [True, True], chosen_map=0)
    for a, b in zip(plain[2:], identity[2:]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_cell_lookup_map_reads_the_map_that_explains_the_demos():
    with pytest.raises(ValueError, match="cell_lookup_map"):
        TRMWithEncoder(tiny_config(cell_lookup_map=True))
    # in the model, the map is relabelled_agreement's best: on a flipped puzzle the lookup reads through the flip
    side = 6
    torch.manual_seed(0)
    model = TRMWithEncoder(tiny_config(cell_lookup=True, cell_lookup_map=True, seq_len=side * side)).eval()
    batch = make_batch(side=side)
    B, D, _ = batch["demo_inputs"].shape
    rng = np.random.default_rng(0)
    grids = [rng.integers(0, 10, (3, 4)) for _ in range(D + 1)]
    batch["demo_inputs"][:] = _t(*grids[:-1]).unsqueeze(0)
    batch["demo_labels"][:] = _t(*[np.fliplr(g) for g in grids[:-1]]).unsqueeze(0)
    batch["inputs"][:] = _t(grids[-1])
    batch["demo_mask"][:] = True
    seen = []
    model.cell_lookup.register_forward_hook(lambda mod, args, out: seen.append(out[1]))
    with torch.no_grad():
        model.cell_lookup.vote_gain.fill_(1.0)
        model(model.initial_carry(batch), batch)
        want = model.cell_lookup(batch["inputs"], batch["demo_inputs"], batch["demo_labels"], batch["demo_mask"],
                                 (torch.full((B, 1), FLIP_LR), torch.ones(B, 1, dtype=torch.bool)))[1]
    torch.testing.assert_close(seen[0], want, rtol=0, atol=0)
    answer = want[0, :, COLOUR_OFFSET:COLOUR_OFFSET + 10].argmax(-1).view(side, side)[:3, :4].numpy()
    np.testing.assert_array_equal(answer, np.fliplr(grids[-1]))


@pytest.mark.parametrize("options", [{}, {"cell_lookup_select": True},
                                     {"cell_lookup_select": True, "cell_lookup_table": True}],
                         ids=["plain", "select", "table"])
def test_step_zero_equals_the_model_without_it_and_gradient_every_step(options):
    batch = make_batch()
    torch.manual_seed(0)
    with_l = TRMWithEncoder(tiny_config(cell_lookup=True, pos_encodings="rope_2d", **options))
    torch.manual_seed(0)
    without = TRMWithEncoder(tiny_config(pos_encodings="rope_2d"))
    missing, unexpected = without.load_state_dict(with_l.state_dict(), strict=False)
    assert not missing and unexpected and all(k.startswith("cell_lookup.") for k in unexpected)
    a = with_l(with_l.initial_carry(batch), batch)[1]["logits"]
    b = without(without.initial_carry(batch), batch)[1]["logits"]
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    # once the output projection or the vote gain moves, the lookup changes the answer
    for name in ("o_proj", "vote_gain") + (("table_gain",) if options.get("cell_lookup_table") else ()):
        model = copy.deepcopy(with_l)
        with torch.no_grad():
            p = model.cell_lookup.get_parameter(name + (".weight" if name == "o_proj" else ""))
            p.copy_(0.2 * torch.randn_like(p) if p.ndim else torch.tensor(0.2))
        assert (model(model.initial_carry(batch), batch)[1]["logits"] - b).abs().max() > 1e-3, name
    # ... and with both moved, every part learns on every ACT step
    with torch.no_grad():
        torch.nn.init.normal_(with_l.cell_lookup.o_proj.weight, std=0.2)
        with_l.cell_lookup.vote_gain.fill_(0.2)
    params = [(n, p) for n, p in with_l.named_parameters() if n.startswith("cell_lookup.")]
    assert len(params) == 8 + bool(options.get("cell_lookup_table"))   # + table_gain
    assert_gradient_every_act_step(with_l.train(), params, batch)


def test_hydra_config_with_cell_lookup_builds_and_steps():
    model, _ = build_and_step("cfg_pretrain_etrm_synthetic", ["arch.cell_lookup=true", "data_paths=[x]"])
    assert model.config.cell_lookup and model.cell_lookup.o_proj.weight.grad.abs().sum() > 0
