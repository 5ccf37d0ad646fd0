"""`arch.answer_size` (models/answer_size.py): the answer's size read from the demos by a vocabulary of
size rules, voted on the output tokens as the answer's frame.
- on hand-made puzzles the first rule that gives every demo its output's size gives the query's:
  the input's size, a row as long as the objects are many, the foreground's box, a constant, a
  multiple; masked demo slots do not count; no rule that fits -> unknown;
- the frame: colours inside, EOS on the row below and the column right, nothing beyond or unknown;
- a model with it equals the model without it at step 0, its gain learns on every ACT step, the
  zeroed-context ablation gets no frame, and the Hydra config builds and steps."""
from __future__ import annotations

import numpy as np
import torch

from dataset.tokens import COLOUR_OFFSET, EOS_ID, PAD_ID
from models.answer_size import answer_size, frame_logits
from models.recursive_reasoning.etrm import TRMWithEncoder
from tests.helpers import assert_gradient_every_act_step, build_and_step, grid_tokens, make_batch, tiny_config

torch.set_num_threads(2)
SIDE = 8


def _size(demos: list[tuple[np.ndarray, np.ndarray]], query: np.ndarray, mask: list[bool] | None = None):
    d_in = grid_tokens([i for i, _ in demos], SIDE)[None]
    d_out = grid_tokens([o for _, o in demos], SIDE)[None]
    mask = torch.tensor([mask or [True] * len(demos)])
    size, known = answer_size(d_in, d_out, mask, grid_tokens([query], SIDE), SIDE)
    return tuple(size[0].tolist()) if known[0] else None


def _objects(n: int) -> np.ndarray:
    """n dominoes of colour 3 that touch nowhere (n objects, 2n cells)."""
    g = np.zeros((5, 8), int)
    for k in range(n):
        g[2 * (k // 3), 3 * (k % 3):3 * (k % 3) + 2] = 3
    return g


def test_the_first_rule_every_demo_agrees_with_gives_the_answers_size():
    rng = np.random.default_rng(0)
    a, b, q = rng.integers(0, 4, (3, 4)), rng.integers(0, 4, (5, 2)), rng.integers(0, 4, (6, 3))
    # same size (a recolouring) -> the query's size
    assert _size([(a, (a + 1) % 10), (b, b)], q) == (6, 3)
    # square demos fit "same" and "transpose" (and more): the simplest rule, the query's own size
    sq = [rng.integers(1, 4, (k, k)) for k in (3, 4)]
    assert _size([(g, g) for g in sq], q) == (6, 3)
    # a row as long as the input has objects
    bar = lambda g: np.full((1, int((g != 0).sum()) // 2), 4)  # noqa: E731  (dominoes: 2 cells each)
    demos = [(_objects(n), bar(_objects(n))) for n in (2, 5, 3)]
    assert _size(demos, _objects(6)) == (1, 6)
    # the foreground's bounding box (a crop)
    crop = lambda g: g[np.ix_(np.nonzero(g.any(1))[0], np.nonzero(g.any(0))[0])]  # noqa: E731
    boxed = [np.pad(np.full((h, w), 5), ((1, 2), (2, 1))) for h, w in ((2, 3), (1, 4), (3, 1))]
    assert _size([(g, crop(g)) for g in boxed], np.pad(np.full((2, 2), 5), ((3, 0), (1, 2)))) == (2, 2)
    # one constant size; a multiple (2 x 1 tiling)
    assert _size([(a, np.zeros((2, 2), int)), (b, np.ones((2, 2), int))], q) == (2, 2)
    assert _size([(a, np.tile(a, (2, 1))), (b[:4], np.tile(b[:4], (2, 1)))], q[:4]) == (8, 3)


def test_masked_demos_do_not_count_and_no_fitting_rule_is_unknown():
    rng = np.random.default_rng(1)
    a, b, q = rng.integers(0, 4, (3, 4)), rng.integers(0, 4, (5, 2)), rng.integers(0, 4, (6, 3))
    junk = (b, np.zeros((7, 7), int))           # a masked slot whose "output" fits no rule
    assert _size([(a, a), junk], q, [True, False]) == (6, 3)
    assert _size([(a, a), junk], q) is None       # the same slot real: no rule fits both demos
    # a size that does not fit the canvas is unknown too (the 2 x 2 tiling of a 6 x 3 query)
    assert _size([(a, np.tile(a, (2, 2))), (b[:2], np.tile(b[:2], (2, 2)))], q) is None


def test_the_frame():
    bias = frame_logits(torch.tensor([[2, 3], [2, 3]]), torch.tensor([True, False]), 4, 12).view(2, 4, 4, 12)
    colours = slice(COLOUR_OFFSET, COLOUR_OFFSET + 10)
    inside, eos = bias[0, :2, :3], torch.cat([bias[0, 2, :4], bias[0, :2, 3]])
    assert (inside[..., colours] == 0).all() and (inside[..., [PAD_ID, EOS_ID]] < -5).all()
    assert (eos[..., EOS_ID] == 0).all() and (eos[..., colours] < -5).all() and (eos[..., PAD_ID] < -5).all()
    assert (bias[0, 3] == 0).all()                # beyond the EOS row: no label there, no vote
    assert (bias[1] == 0).all()                   # unknown size: nothing


def test_step_zero_equals_the_model_without_it_and_gradient_every_step():
    batch = make_batch()
    torch.manual_seed(0)
    with_s = TRMWithEncoder(tiny_config(answer_size=True))
    torch.manual_seed(0)
    without = TRMWithEncoder(tiny_config())
    missing, unexpected = without.load_state_dict(with_s.state_dict(), strict=False)
    assert not missing and unexpected == ["answer_size.gain"]
    a = with_s(with_s.initial_carry(batch), batch)[1]["logits"]
    b = without(without.initial_carry(batch), batch)[1]["logits"]
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    with torch.no_grad():
        with_s.answer_size.gain.fill_(0.2)
    moved = with_s(with_s.initial_carry(batch), batch)[1]["logits"]
    assert (moved - b).abs().max() > 1e-3
    assert_gradient_every_act_step(with_s.train(), [("answer_size.gain", with_s.answer_size.gain)], batch)
    # the zeroed-context ablation reads no demo: no frame either
    torch.manual_seed(0)
    ablated = TRMWithEncoder(tiny_config(answer_size=True, context_ablation=True))
    with torch.no_grad():
        ablated.answer_size.gain.fill_(0.2)
    torch.manual_seed(0)
    ablated_without = TRMWithEncoder(tiny_config(context_ablation=True))
    torch.testing.assert_close(ablated(ablated.initial_carry(batch), batch)[1]["logits"],
                               ablated_without(ablated_without.initial_carry(batch), batch)[1]["logits"],
                               rtol=0, atol=0)


def test_hydra_config_with_answer_size_builds_and_steps():
    model, _ = build_and_step("cfg_pretrain_etrm_synthetic", ["arch.answer_size=true", "data_paths=[x]"])
    assert model.config.answer_size and model.answer_size.gain.grad is not None


def test_the_bench_prints_the_share_of_sizes_given_per_family(tmp_path, capsys):
    from bench.answer_size import main
    rng = np.random.default_rng(2)
    grids = [rng.integers(1, 4, (h, w)) for h, w in ((2, 3), (3, 4), (4, 2))]
    pair = lambda i, o: {"input": i.tolist(), "output": o.tolist()}  # noqa: E731
    for family, rule in (("same", lambda g: g), ("tiled", lambda g: np.tile(g, (1, 2))), ("odd", lambda g: g[:1, :1])):
        (tmp_path / family).mkdir()
        task = {"train": [pair(g, rule(g)) for g in grids[:2]], "test": [pair(grids[2], rule(grids[2]))]}
        if family == "odd":   # the second demo's output breaks every rule the first fits
            task["train"][1]["output"] = np.zeros((5, 7), int).tolist()
        (tmp_path / family / "t.json").write_text(__import__("json").dumps(task))
    main([str(tmp_path), "--side", "8"])
    rows = {line.split()[0]: line.split()[1:5] for line in capsys.readouterr().out.splitlines()[1:]}
    assert rows == {"odd": ["1", "0.00", "1.00", "0.00"], "same": ["1", "1.00", "0.00", "1.00"],
                    "tiled": ["1", "1.00", "0.00", "0.00"]}
