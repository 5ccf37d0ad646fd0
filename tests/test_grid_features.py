"""Per-cell grid features (`arch.grid_features`, models/grid_features.py):
- the features of hand-made grids are what a person reads off them (region sizes, enclosure,
  objects, rays, neighbours, colour frequency, positions from the far edges), and the components
  agree with dataset/synthetic_families.py's own object finder on random grids;
- cells off the grid all get 0, whatever the canvas size;
- component labelling gives every cell its component's smallest index (4- and 8-connected, both
  kinds in one call) on random grids and on a serpentine, and reads the device once per call;
- a model with grid_features equals the model without them at step 0, the feature tables get
  gradient on every ACT step, the packed and padded encoder layouts still agree, and the Hydra
  config builds and steps."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dataset.grids import encode_grid
from dataset.synthetic_families import components
from models.encoders.common import EncoderConfig
from models.encoders.demo_reader import DemoReader
from models.grid_features import FEATURE_INDEX, FEATURES, NUM_FEATURES, TABLE_SIZE, GridFeatureEmbedding, grid_features
from models.grid_features import component_labels
from models.recursive_reasoning.etrm import TRMWithEncoder
from tests.helpers import PADDING_SIDE as SIDE
from tests.helpers import assert_gradient_every_act_step, build_and_step, make_batch, ragged_batch, tiny_config

torch.set_num_threads(2)

RING = np.array([[0, 0, 0, 0, 0, 0],
                 [0, 3, 3, 3, 0, 0],
                 [0, 3, 0, 3, 0, 7],
                 [0, 3, 3, 3, 0, 0],
                 [0, 0, 0, 0, 0, 0]])


def _features(g: np.ndarray, side: int = 8) -> dict[str, np.ndarray]:
    ids = grid_features(torch.from_numpy(encode_grid(g, side)), side).view(side, side, NUM_FEATURES).numpy()
    h, w = g.shape
    return {name: ids[:h, :w, i] for name, i in FEATURE_INDEX.items()} | {"_all": ids}


def test_hand_made_grid():
    f = _features(RING)
    # regions: the outside background (1, open), the enclosed hole (2), the ring, the lone 7 (3: touches the border)
    assert f["region_kind"][0, 0] == 1 and f["region_kind"][2, 2] == 2
    assert f["region_kind"][1, 1] == 4 and f["region_kind"][2, 5] == 3
    assert f["region_size"][2, 2] == 1 and f["region_size"][1, 1] == 8          # 1 cell; 8 cells (exact up to 8)
    assert f["region_size"][0, 0] == 10                                        # 21 background cells: bucket 17-32
    assert f["object_size"][1, 1] == 8 and f["object_size"][2, 5] == 1
    # objects: the ring (8 cells) is the largest, the 7 (1 cell) the smallest; background has none
    assert f["object_rank"][1, 1] == 1 and f["object_rank"][2, 5] == 2 and f["object_rank"][0, 0] == 0
    assert f["object_height"][3, 2] == 3 and f["object_width"][3, 2] == 3       # 3x3 box (stored as extent - 1, + 1)
    assert f["object_row"][3, 2] == 3 and f["object_col"][3, 2] == 2           # offset (2, 1) inside the box, + 1
    assert f["object_row_edge"][3, 2] == 4 and f["object_col_edge"][3, 2] == 3 # bottom edge, inside column-wise
    assert f["object_row_edge"][2, 5] == 1                                     # a one-row object
    # rays from the hole (2, 2): ring cells one step away in every direction, one fg cell each way
    for d in ("down", "up", "right", "left"):
        assert f[f"ray_{d}_colour"][2, 2] == 3 + 2 and f[f"ray_{d}_distance"][2, 2] == 1, d
    assert f["ray_right_count"][2, 2] == 2 + 1                                 # the ring's right side and the 7
    # from (0, 5) down: the 7 two rows below; from (4, 5) down: the edge, 1 step
    assert f["ray_down_colour"][0, 5] == 9 and f["ray_down_distance"][0, 5] == 2
    assert f["ray_down_colour"][4, 5] == 1 and f["ray_down_distance"][4, 5] == 1
    assert f["ray_left_colour"][2, 0] == 1 and f["ray_left_distance"][2, 0] == 1
    assert f["ray_up_distance"][4, 0] == 5                                     # to the top edge
    # a ring cell does not see itself: from (3, 2) up, the hole then the ring's top at distance 2
    assert f["ray_up_distance"][3, 2] == 2 and f["ray_up_count"][3, 2] == 1 + 1
    assert f["ray_down_distance"][1, 2] == 2 and f["ray_left_distance"][2, 3] == 2
    # neighbourhood: ring corner (1, 1) has 2 same-colour neighbours; the hole has 4 fg 4-neighbours
    assert f["same_neighbours"][1, 1] == 2 + 1 and f["foreground_neighbours"][2, 2] == 4 + 1
    # ... 8 fg 8-neighbours; (2, 4) between the ring and the 7: 3 ring cells + the 7; (0, 0): the corner
    assert f["foreground_neighbours_8"][2, 2] == 8 + 1 and f["foreground_neighbours_8"][2, 4] == 4 + 1
    assert f["foreground_neighbours_8"][0, 0] == 1 + 1 and f["foreground_neighbours"][0, 0] == 0 + 1
    # between: the hole sees the ring (colour 3) on both sides along its row and its column; (2, 4)
    # sees the ring left and the 7 right (not the same) and the edge up and down (the edge is no colour)
    for name in ("row_between", "col_between", "between"):
        assert f[name][2, 2] == 3 + 2 and f[name][2, 4] == 1 and f[name][0, 2] == 1, name
    assert f["row_between"][1, 2] == 3 + 2 and f["col_between"][1, 2] == 1 and f["between"][1, 2] == 3 + 2
    # the ring's left side: the ring above and below; the edge left, the ring (past the hole) right
    assert f["col_between"][2, 1] == 3 + 2 and f["row_between"][2, 1] == 1 and f["between"][2, 1] == 3 + 2
    # diagonal rays: the hole sees the ring's corners; (3, 4) sees the 7 up-right and the ring up-left;
    # the 7 does not see itself (up-left: two background cells, then the edge); (4, 5) down-left: the
    # grid's edge, not the canvas beyond it
    for d in ("down_right", "down_left", "up_right", "up_left"):
        assert f[f"ray_{d}_colour"][2, 2] == 3 + 2, d
    assert f["ray_up_right_colour"][3, 4] == 7 + 2 and f["ray_up_left_colour"][3, 4] == 3 + 2
    assert f["ray_down_left_colour"][1, 4] == 3 + 2 and f["ray_down_right_colour"][1, 4] == 7 + 2
    assert f["ray_up_left_colour"][2, 5] == 1 and f["ray_down_left_colour"][4, 5] == 1
    assert f["colour_frequency"][1, 1] == 3 and f["colour_frequency"][2, 5] == 4 and f["colour_frequency"][0, 0] == 2
    # positions from the far edges
    assert f["row_from_bottom"][4, 0] == 1 and f["col_from_right"][0, 5] == 1 and f["col"][0, 5] == 6


def test_values_are_in_range_and_zero_off_the_grid():
    rng = np.random.default_rng(0)
    for side in (8, 12):
        g = rng.integers(0, 10, (5, 7)) * (rng.random((5, 7)) < 0.5)
        ids = _features(g, side)["_all"]
        card = np.array([n for _, n in FEATURES])
        assert (ids >= 0).all() and (ids < card).all()
        obj = np.array([name.startswith("object_") for name, _ in FEATURES])
        assert (ids[:5, :7][..., ~obj] > 0).all()          # every grid cell has a value for every feature
        np.testing.assert_array_equal(ids[:5, :7][..., obj].min(-1) > 0, g > 0)  # ... objects: the fg cells only
        assert (ids[5:] == 0).all() and (ids[:, 7:] == 0).all()
    # the canvas size changes nothing on the grid
    np.testing.assert_array_equal(_features(RING, 8)["_all"][:5, :6], _features(RING, 12)["_all"][:5, :6])


def test_regions_match_the_generators_components():
    """Same-colour 4-connected foreground regions have the sizes dataset/synthetic_families.py finds."""
    rng = np.random.default_rng(1)
    for _ in range(20):
        g = rng.integers(1, 4, (8, 8)) * (rng.random((8, 8)) < 0.6)
        f = _features(g)
        want = np.zeros((8, 8), int)
        for _, cells in components(g):
            for r, c in cells:
                want[r, c] = len(cells)
        log = np.ceil(np.log2(np.maximum(want, 1))).astype(int) + 5                # 9-16 -> 9, 17-32 -> 10, ...
        bucket = np.where(want > 8, log, want)                                   # exact sizes up to 8
        fg = g > 0
        np.testing.assert_array_equal(f["region_size"][fg], bucket[fg])


def _smallest_index_labels(key: np.ndarray, diagonal: bool) -> np.ndarray:
    """Flood fill: each cell with key >= 0 -> the smallest flat index of its component, S elsewhere."""
    side = key.shape[0]
    S = side * side
    out = np.full(S, S)
    steps = [(1, 0), (-1, 0), (0, 1), (0, -1)] + ([(1, 1), (1, -1), (-1, 1), (-1, -1)] if diagonal else [])
    for start in range(S):  # row-major: a component is first reached at its smallest index
        if key.flat[start] < 0 or out[start] < S:
            continue
        out[start], stack = start, [start]
        while stack:
            r, c = divmod(stack.pop(), side)
            for dr, dc in steps:
                rr, cc = r + dr, c + dc
                if 0 <= rr < side and 0 <= cc < side and out[rr * side + cc] == S and key[rr, cc] == key[r, c]:
                    out[rr * side + cc] = start
                    stack.append(rr * side + cc)
    return out


def _serpentine(side: int) -> np.ndarray:
    """One path of background winding through walls, row after row: its last cells are ~side^2 / 2
    steps from its first (a neighbour-to-neighbour labelling needs that many rounds)."""
    g = np.zeros((side, side), dtype=np.int64)
    for r in range(1, side, 2):
        g[r] = 1
        g[r, -1 if r % 4 == 1 else 0] = 0
    return g


def test_component_labels_are_each_components_smallest_index():
    rng = np.random.default_rng(0)
    keys = [rng.integers(0, 3, (12, 12)) * (rng.random((12, 12)) < p) - (rng.random((12, 12)) < 0.1)
            for p in (0.3, 0.6, 0.9) for _ in range(4)]
    keys += [np.pad(_serpentine(9), ((0, 3), (0, 3)), constant_values=-1), _serpentine(12)]
    key = torch.from_numpy(np.stack(keys)).long()
    diagonal = torch.arange(len(keys)) % 2 == 1          # both kinds in one call
    got = component_labels(key, diagonal).numpy()
    for i, k in enumerate(keys):
        np.testing.assert_array_equal(got[i], _smallest_index_labels(k, bool(diagonal[i])), err_msg=f"grid {i}")
    big = _serpentine(30)
    np.testing.assert_array_equal(component_labels(torch.from_numpy(big)[None])[0].numpy(),
                                  _smallest_index_labels(big, False))


def test_component_labels_reads_the_device_once_per_call():
    """The convergence test is the labelling's only device read (a host sync on a GPU): it runs after
    UNCHECKED_ITERATIONS rounds, by which hooking each root and jumping pointers has converged on
    real grids, so one call reads once (with one read per round the recipe read ~30 times a step)."""
    from bench.host_syncs import SyncCounter
    rng = np.random.default_rng(1)
    grids = [rng.integers(0, 4, (10, 10)) * (rng.random((10, 10)) < 0.7) for _ in range(16)]
    grids.append(np.pad(_serpentine(9), ((0, 1), (0, 1))))
    tokens = torch.from_numpy(np.stack([encode_grid(g, 10) for g in grids]))
    with SyncCounter() as counter:
        counter.phase = "train"
        grid_features(tokens, 10)
    assert counter.total("train") == 1, dict(counter.counts["train"])


def _with_features(model):
    """Give the zero-initialised feature tables (and the demo paths' output projections) weights,
    as training would."""
    for name, p in model.named_parameters():
        if "grid_embed" in name or ".feat_" in name or name.endswith("demo_attn.attn.o_proj.weight"):
            torch.nn.init.normal_(p, std=0.2)
    return model


@pytest.mark.parametrize("encoder", ["standard", "colour_slots"])
def test_step_zero_equals_the_model_without_features(encoder):
    batch = make_batch()
    kw = dict(encoder_type=encoder, puzzle_emb_len=12, demo_attention=True, map_read=True, pos_encodings="rope_2d")
    torch.manual_seed(0)
    with_f = TRMWithEncoder(tiny_config(grid_features=True, **kw))
    without = TRMWithEncoder(tiny_config(**kw))
    missing, unexpected = without.load_state_dict(with_f.state_dict(), strict=False)
    assert not missing and unexpected and all("grid_embed" in k or ".feat_" in k for k in unexpected)
    a = with_f(with_f.initial_carry(batch), batch)[1]["logits"]
    b = without(without.initial_carry(batch), batch)[1]["logits"]
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    # ... and once the tables move, the features change the answer
    _with_features(with_f)
    assert (with_f(with_f.initial_carry(batch), batch)[1]["logits"] - b).abs().max() > 1e-3


@pytest.mark.parametrize("encoder", ["standard", "colour_slots"])
def test_feature_tables_get_gradient_every_act_step(encoder):
    torch.manual_seed(0)
    model = _with_features(TRMWithEncoder(tiny_config(grid_features=True, demo_attention=True, encoder_type=encoder,
                                                      puzzle_emb_len=12, halt_max_steps=3))).train()
    tables = [(n, p) for n, p in model.named_parameters() if "grid_embed" in n or ".feat_" in n]
    assert len(tables) == (3 if encoder == "standard" else 4)  # inner, encoder (1 or in/out), demo reader
    assert_gradient_every_act_step(model, tables, make_batch())


def test_packed_and_padded_layouts_agree_with_features():
    batch = ragged_batch()
    args = (batch["demo_inputs"], batch["demo_labels"], batch["demo_mask"])
    readers = []
    for packed in (True, False):
        torch.manual_seed(0)
        cfg = EncoderConfig(hidden_size=32, num_heads=4, seq_len=SIDE * SIDE, num_layers=1, expansion=2.0,
                            packed=packed, grid_features=True)
        reader = DemoReader(cfg).eval()
        torch.nn.init.normal_(reader.grid_embed.weight, std=0.5)
        readers.append(reader)
    a, b = readers[0](*args), readers[1](*args)
    torch.testing.assert_close(a.states, b.states, rtol=1e-4, atol=1e-5)
    torch.manual_seed(0)
    model = _with_features(TRMWithEncoder(dict(
        batch_size=3, seq_len=SIDE * SIDE, vocab_size=12, max_demos=4, puzzle_emb_len=4, hidden_size=32, num_heads=4,
        expansion=2.0, H_cycles=2, L_cycles=1, L_layers=1, halt_max_steps=2, halt_exploration_prob=0.0,
        encoder_num_layers=1, grid_features=True))).eval()
    with torch.no_grad():
        ref = model(model.initial_carry(batch), batch)[1]["logits"]
        model.set_encoder_packing(False)
        torch.testing.assert_close(model(model.initial_carry(batch), batch)[1]["logits"], ref, rtol=1e-4, atol=1e-4)


def test_hydra_config_with_grid_features_builds_and_steps():
    model, _ = build_and_step("cfg_pretrain_etrm_synthetic", ["arch.grid_features=true", "data_paths=[x]"])
    assert model.config.grid_features


def test_a_table_from_before_an_appended_feature_loads():
    """A checkpoint's table without the last feature's rows (saved before it was added) loads: its
    rows are kept, the appended feature's rows keep the module's init."""
    torch.manual_seed(0)
    emb = GridFeatureEmbedding(16, init_std=1.0)
    fresh = emb.weight.detach().clone()
    n_last = FEATURES[-1][1]
    old = torch.randn(TABLE_SIZE - n_last, 16)
    emb.load_state_dict({"weight": old})
    torch.testing.assert_close(emb.weight.detach()[:-n_last], old)
    torch.testing.assert_close(emb.weight.detach()[-n_last:], fresh[-n_last:])
