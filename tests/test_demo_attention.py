"""The inner model reads the demos itself: cross-attention to every real demo cell
(`arch.demo_attention`) and reads through candidate cell maps chosen by the demos' agreement
(`arch.map_read`, models/grid_maps.py):
- the maps are dataset/augment.py's dihedral maps (times shifts and tiling translations), every
  rule of the spatial synthetic families is a map, a forced choice reads exactly the mapped cells;
- the demos' agreement prefers the map they follow, and ignores masked slots, PAD, canvas size;
- the demo reader's tokens are exactly the real demo cells (the packed layout equals a padded
  reference; masked slots, PAD and the bucket tail change nothing);
- at step 0 a model with the new paths computes what the model without them computes;
- the demo paths get gradient on every ACT step, and are skipped by the zeroed-context ablation;
- TRM decoder weights still load, and the Hydra config composes with the options on."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from dataset import synthetic
from dataset.augment import dihedral
from dataset.grids import encode_grid
from dataset.synthetic import SHIFTS, TILES
from models.encoders.common import EncoderConfig
from models.encoders.demo_reader import DemoReader
from models.grid_maps import _TRANSLATIONS, NUM_MAPS, ONE_CELL_TRANSLATIONS, MapMatch, MapRead, dihedral_positions
from models.grid_maps import grid_sizes, map_footprints, map_sources
from models.pretrained import load_pretrained_decoder
from models.recursive_reasoning.etrm import TRMWithEncoder
from tests.helpers import assert_gradient_every_act_step, build_and_step, make_batch, tiny_config
from tests.helpers import PADDING_SIDE as SIDE, ragged_batch

torch.set_num_threads(2)


@pytest.mark.parametrize("h,w", [(3, 5), (4, 4), (2, 7), (1, 1)])
def test_dihedral_positions_are_the_dataset_maps(h, w):
    rows, cols = torch.arange(h * w) // w, torch.arange(h * w) % w
    fr, fc = dihedral_positions(rows, cols, torch.tensor(h), torch.tensor(w))
    ids = np.arange(h * w).reshape(h, w)
    for d in range(8):
        moved = dihedral(ids, d)  # cell i of the input lands where `moved` holds i
        assert moved.shape == (int(fr[d].max()) + 1, int(fc[d].max()) + 1)
        np.testing.assert_array_equal(moved[fr[d].numpy(), fc[d].numpy()], ids.reshape(-1))
        # inverse: each cell of the moved grid comes from the input cell it holds
        mh, mw = moved.shape
        r2, c2 = torch.arange(mh * mw) // mw, torch.arange(mh * mw) % mw
        ir, ic = dihedral_positions(r2, c2, torch.tensor(h), torch.tensor(w), inverse=True)
        np.testing.assert_array_equal(ids[ir[d].numpy(), ic[d].numpy()], moved.reshape(-1))


def test_map_sources_per_axis_are_the_affine_maps_at_every_cell():
    """map_sources computes each map per row and per column and adds them up: it must equal the
    translation then the inverse dihedral map applied to every cell (dihedral_positions), with
    side * side where the source is off the canvas; map_footprints' sources must lie on the h x w
    grid. Every size up to the canvas, empty grids included."""
    side = 7
    h, w = (x.reshape(-1) for x in torch.meshgrid(torch.arange(side + 1), torch.arange(side + 1), indexing="ij"))
    S = side * side
    cell = torch.arange(S)
    want = []
    for tr_u, tc_u, tr_h, tc_w in _TRANSLATIONS:
        r = cell // side + tr_u + tr_h * h[:, None]
        c = cell % side + tc_u + tc_w * w[:, None]
        rr, cc = dihedral_positions(r, c, h, w, inverse=True)                      # [N, 8, S]
        on = (rr >= 0) & (rr < side) & (cc >= 0) & (cc < side)
        want.append(torch.where(on, rr * side + cc, S))
    want = torch.cat(want, 1)                                                        # [N, 96, S]
    assert torch.equal(map_sources(h, w, side), want)
    src, footprint = map_footprints(h, w, side)
    on_grid = (want < S) & (want // side < h.view(-1, 1, 1)) & (want % side < w.view(-1, 1, 1))
    assert torch.equal(src, torch.where(footprint & on_grid, want, S))   # read only from the h x w grid
    copies = torch.arange(NUM_MAPS) // 8 >= ONE_CELL_TRANSLATIONS           # a copy's footprint: what it reads
    assert torch.equal(footprint[:, copies], on_grid[:, copies])
    assert not (src < S)[(h == 0) | (w == 0)].any()


def _read_through(grid: np.ndarray, m: int, side: int = 8) -> np.ndarray:
    """The canvas read through map m (off-canvas reads -1)."""
    canvas = torch.from_numpy(encode_grid(grid, side))
    src = map_sources(torch.tensor([grid.shape[0]]), torch.tensor([grid.shape[1]]), side)[0, m]
    return torch.cat([canvas, torch.tensor([-1])])[src].view(side, side).numpy()


def _reads(g: np.ndarray, m: int, want: np.ndarray, where: np.ndarray, side: int = 8) -> bool:
    """Map m reads the answer canvas `want` on the cells `where`: the input cell it points at, or
    background where it points off the input grid."""
    got = _read_through(g, m, side)[where]
    return bool(np.where(got >= 2, got == want[where], want[where] == 2).all())


def test_every_rule_of_the_spatial_families_is_one_map():
    """Each flip/rotation, one-cell shift and tiling of dataset/synthetic.py is read, cell for cell
    of the answer grid, by one candidate map (one per copy for a tiling); a cell whose map points
    off the input grid (a shift's vacated edge) is background."""
    rng = np.random.default_rng(0)
    rules = [("dihedral", {"dihedral": d}) for d in range(8)] + [("shift", {"shift": list(s)}) for s in SHIFTS]
    rules += [("tile", {"tile": list(t), "mirror": m}) for t in TILES for m in (False, True)]

    for family, rule in rules:
        g = np.zeros((4, 3), np.uint8) if family == "shift" else rng.integers(1, 10, (3, 4)).astype(np.uint8)
        if family == "shift":
            g[1:3, 1] = [3, 7]
        want = encode_grid(synthetic.apply_rule(family, rule, g), 8).reshape(8, 8)
        h, w = g.shape
        k, l = rule["tile"] if family == "tile" else (1, 1)
        for i, j in itertools.product(range(k), range(l)):  # a tiling: one map per copy
            block = np.zeros((8, 8), bool)
            oh, ow = (h, w) if family == "tile" else want.shape and np.argwhere(want >= 2).max(0) + 1
            block[i * oh:(i + 1) * oh, j * ow:(j + 1) * ow] = True
            assert any(_reads(g, m, want, block & (want >= 2)) for m in range(NUM_MAPS)), (family, rule, i, j)


def test_map_read_with_a_forced_choice_reads_the_mapped_cells():
    """Two samples in one batch (different grids): each reads its own cells through the chosen map."""
    torch.manual_seed(0)
    H, side = 16, 8
    read = MapRead(H, 2)
    rng = np.random.default_rng(1)
    grids = [rng.integers(1, 10, (3, 5)).astype(np.uint8), rng.integers(1, 10, (4, 2)).astype(np.uint8)]
    canvas = torch.from_numpy(np.stack([encode_grid(g, side) for g in grids])).long()
    sources = map_sources(*grid_sizes(canvas, side), side)
    x = torch.zeros(2, 2 + side * side, H)
    x[:, 2:, 0] = canvas.float()
    for m in (5, 8 * 3 + 1, 8 * 9 + 6):  # flip; a shift after a rotation; a mirrored copy one grid down
        with torch.no_grad():
            read.v_proj.weight.copy_(torch.eye(H))
            read.o_proj.weight.copy_(torch.eye(H))
            read.choice.bias.zero_()
            read.choice.bias.view(2, NUM_MAPS)[:, m] = 5.0   # x MAP_LOGIT_SCALE: the choice is one map
        agreement = torch.nn.functional.one_hot(torch.tensor([m, m]), NUM_MAPS).float()  # puts m among the top k
        out = read(x, sources, agreement)
        assert (out[:, :2] == 0).all()
        for i, g in enumerate(grids):
            want = np.where(_read_through(g, m) < 0, 0, _read_through(g, m))
            np.testing.assert_allclose(out[i, 2:, 0].detach().numpy().reshape(side, side), want, atol=1e-4)


def test_map_match_prefers_the_demos_map_and_ignores_padding():
    """At init the map the demos follow has the highest agreement; masked demo slots, PAD and the
    canvas size change nothing."""
    for side in (8, 10):
        torch.manual_seed(0)
        match = MapMatch(12, side)
        torch.manual_seed(0)
        match_ref = MapMatch(12, 8)
        for family in ("dihedral", "shift", "tile"):
            rule, demos, _ = synthetic.make_puzzle(family, np.random.default_rng(3))
            D = len(demos) + 1
            di = np.zeros((1, D, side * side), np.int64)
            dl = np.zeros((1, D, side * side), np.int64)
            for d, (a, b) in enumerate(demos):
                di[0, d], dl[0, d] = encode_grid(a, side), encode_grid(b, side)
            di[0, -1], dl[0, -1] = 5, 7                    # junk in a masked slot
            mask = torch.ones(1, D, dtype=torch.bool)
            mask[0, -1] = False
            agreement = match(torch.from_numpy(di), torch.from_numpy(dl), mask)[0]
            best = int(agreement.argmax())
            if family != "tile":  # (a tiling's best map is right on one copy)
                for a, b in demos:
                    want = encode_grid(b, side).reshape(side, side)
                    assert _reads(a, best, want, want >= 2, side), (family, rule, best)
            if side == 10:  # same agreement as on the 8x8 canvas
                di8 = np.stack([encode_grid(a, 8) for a, _ in demos])[None]
                dl8 = np.stack([encode_grid(b, 8) for _, b in demos])[None]
                ref = match_ref(torch.from_numpy(di8), torch.from_numpy(dl8), torch.ones(1, len(demos), dtype=torch.bool))[0]
                torch.testing.assert_close(agreement, ref)


def _reader(packed=True, layers=2):
    torch.manual_seed(0)
    cfg = EncoderConfig(hidden_size=32, num_heads=4, seq_len=SIDE * SIDE, num_layers=layers, expansion=2.0,
                        packed=packed)
    return DemoReader(cfg).eval()


def test_demo_tokens_are_the_real_cells_packed_or_padded():
    batch = ragged_batch()
    args = (batch["demo_inputs"], batch["demo_labels"], batch["demo_mask"])
    packed, padded = _reader(True), _reader(False)
    a, b = packed(*args), padded(*args)
    torch.testing.assert_close(a.states, b.states, rtol=1e-4, atol=1e-5)
    assert torch.equal(a.mask, b.mask) and torch.equal(a.rows, b.rows) and torch.equal(a.cols, b.cols)
    # exactly the non-PAD cells of the real demo slots, with their rows and columns, in order
    for i in range(a.mask.shape[0]):
        cells = []
        for d in range(batch["demo_mask"].shape[1]):
            if batch["demo_mask"][i, d]:
                for grid in (batch["demo_inputs"][i, d], batch["demo_labels"][i, d]):
                    idx = (grid != 0).nonzero().squeeze(1)
                    cells += [(int(j) // SIDE, int(j) % SIDE) for j in idx]
        n = int(a.mask[i].sum())
        assert n == len(cells) and a.mask[i, :n].all()
        assert list(zip(a.rows[i, :n].tolist(), a.cols[i, :n].tolist())) == cells
        assert (a.states[i, n:] == 0).all()


def _trained_looking(model):
    """Give the zero-initialised output projections weights, as training would (the zero init
    would hide every effect of the new paths)."""
    for name, p in model.named_parameters():
        if name.endswith(("demo_attn.attn.o_proj.weight", "map_read.0.o_proj.weight")) or ".choice." in name:
            torch.nn.init.normal_(p, std=0.2)
    return model


def _ragged_cfg(**kw):
    return dict(batch_size=3, seq_len=SIDE * SIDE, vocab_size=12, max_demos=4, puzzle_emb_len=4, hidden_size=32,
                num_heads=4, expansion=2.0, H_cycles=2, L_cycles=1, L_layers=1, halt_max_steps=2,
                halt_exploration_prob=0.0, encoder_num_layers=1, encoder_set_layers=1, **kw)


def test_model_ignores_masked_slots_pad_and_layout():
    """Junk in masked demo slots, and the padded reader layout, leave the step's logits unchanged;
    a real demo cell does change them."""
    torch.manual_seed(0)
    model = _trained_looking(TRMWithEncoder(_ragged_cfg(demo_attention=True, map_read=True, pos_encodings="rope_2d"))).eval()
    batch = ragged_batch()
    with torch.no_grad():
        ref = model(model.initial_carry(batch), batch)[1]["logits"]
        junk = dict(batch, demo_inputs=batch["demo_inputs"].clone(), demo_labels=batch["demo_labels"].clone())
        junk["demo_inputs"][~batch["demo_mask"]] = 5
        junk["demo_labels"][~batch["demo_mask"]] = 7
        torch.testing.assert_close(model(model.initial_carry(junk), junk)[1]["logits"], ref)
        model.set_encoder_packing(False)
        assert not model.demo_reader.packed
        torch.testing.assert_close(model(model.initial_carry(batch), batch)[1]["logits"], ref, rtol=1e-4, atol=1e-4)
        model.set_encoder_packing(True)
        other = dict(batch, demo_labels=batch["demo_labels"].clone())
        other["demo_labels"][0, 0] = torch.where(other["demo_labels"][0, 0] > 1, 2, other["demo_labels"][0, 0])
        assert (model(model.initial_carry(other), other)[1]["logits"][0] - ref[0]).abs().max() > 1e-3


@pytest.mark.parametrize("pos", ["rope", "rope_2d"])
def test_step_zero_equals_the_model_without_the_new_paths(pos):
    batch = make_batch()
    torch.manual_seed(0)
    with_new = TRMWithEncoder(tiny_config(pos_encodings=pos, demo_attention=True, map_read=True))
    without = TRMWithEncoder(tiny_config(pos_encodings=pos))
    missing, unexpected = without.load_state_dict(with_new.state_dict(), strict=False)
    assert not missing and unexpected
    assert all(k.startswith(("demo_reader.", "map_match.", "inner.demo_attn.", "inner.map_read.")) for k in unexpected)
    a = with_new(with_new.initial_carry(batch), batch)[1]
    b = without(without.initial_carry(batch), batch)[1]
    torch.testing.assert_close(a["logits"], b["logits"], rtol=0, atol=0)


def test_demo_paths_get_gradient_every_act_step():
    torch.manual_seed(0)
    model = _trained_looking(TRMWithEncoder(tiny_config(demo_attention=True, map_read=True, halt_max_steps=3))).train()
    # (map_match.mismatch_cost only moves the maps with wrong cells, which need not be among the top k)
    demo_params = [(n, p) for n, p in model.named_parameters() if n != "map_match.mismatch_cost"
                   and n.startswith(("demo_reader.", "map_match.", "inner.demo_attn.", "inner.map_read."))]
    assert_gradient_every_act_step(model, demo_params, make_batch())


def test_ablation_skips_the_demos():
    torch.manual_seed(0)
    model = _trained_looking(TRMWithEncoder(tiny_config(demo_attention=True, map_read=True, context_ablation=True)))
    batch = make_batch()
    other = dict(batch, demo_labels=torch.flip(batch["demo_labels"], dims=[0]))
    with torch.no_grad():
        a = model.eval()(model.initial_carry(batch), batch)[1]["logits"]
        b = model(model.initial_carry(other), other)[1]["logits"]
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_trm_decoder_weights_load_into_a_model_with_the_new_paths(tmp_path):
    torch.manual_seed(1)
    source = TRMWithEncoder(tiny_config())
    trm = {f"_orig_mod.model.inner.{k.replace('layers.', 'L_level.layers.')}": v
           for k, v in source.inner.state_dict().items()}
    torch.save(trm, tmp_path / "trm.pt")
    model = TRMWithEncoder(tiny_config(demo_attention=True, map_read=True))
    report = load_pretrained_decoder(model, str(tmp_path / "trm.pt"), verbose=False)
    # only the new parts start fresh (both add nothing until training moves their output projections)
    assert report["missing"] and all(k.startswith(("demo_attn.", "map_read.")) for k in report["missing"])
    for k, v in source.inner.state_dict().items():
        torch.testing.assert_close(model.inner.state_dict()[k], v)


@pytest.mark.parametrize("encoder", ["standard", "hybrid_variational", "colour_slots"])
def test_hydra_config_with_the_new_paths_builds_and_steps(encoder):
    """The options compose with any encoder's job line and build through the trainer's builder."""
    model, _ = build_and_step("cfg_pretrain_etrm_tiny", ["arch.demo_attention=true", "arch.map_read=true",
                                                         f"arch.encoder_type={encoder}", "arch.puzzle_emb_len=12"])
    assert model.config.demo_attention and model.config.map_read
