"""The encoders that keep per-cell demo detail (`cell_perceiver`, `colour_slots`) keep the encoder
contract (shapes, gradients; the invariances to PAD, masked demo slots, demo order and canvas size:
tests/test_models_encoders.py INVARIANT), see what a pooled demo vector averages away (which two colours are exchanged), and the
inner model's `context_colour_table` adds slot c to exactly the query cells of colour c."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dataset.grids import encode_grid
from models.encoders import ENCODERS, build_encoder
from models.recursive_reasoning.etrm import TRMWithEncoder
from tests.helpers import demos_of, make_batch, small_encoder, tiny_config


def test_registered():
    assert "cell_perceiver" in ENCODERS


def test_forward_backward_finite():
    enc = small_encoder("cell_perceiver").train()
    out = enc(*demos_of(make_batch(B=3, D=3, n_demos=[1, 2, 3])))
    assert out.context.shape == (3, 4, 32) and out.kl is None
    (out.context.square().sum() + out.context.sum()).backward()
    grads = [p.grad for p in enc.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_exchanged_colours_change_the_context():
    rng = np.random.default_rng(0)
    g = rng.choice([1, 2, 3, 4], size=(4, 4))
    g[0, :4] = [1, 2, 3, 4]

    def swap(grid, a, b):
        out = grid.copy()
        out[grid == a], out[grid == b] = b, a
        return out

    def demos(a, b):
        di = torch.from_numpy(encode_grid(g, 5)).view(1, 1, 25)
        dl = torch.from_numpy(encode_grid(swap(g, a, b), 5)).view(1, 1, 25)
        return di, dl, torch.ones(1, 1, dtype=torch.bool)

    enc = small_encoder("cell_perceiver").eval()
    with torch.no_grad():
        c12, c34 = enc(*demos(1, 2)).context, enc(*demos(3, 4)).context
    assert (c12 - c34).abs().max() > 1e-2


def test_in_the_model_every_act_step():
    """Inside TRMWithEncoder the encoder runs on every ACT step and gets gradient."""
    model = TRMWithEncoder(tiny_config(encoder_type="cell_perceiver"))
    batch = make_batch(B=4, D=3)
    calls = []
    model.encoder.register_forward_hook(lambda *a: calls.append(1))
    carry = model.initial_carry(batch)
    for _ in range(3):
        carry, out = model(carry, batch)
    assert len(calls) == 3
    out["logits"].float().square().mean().backward()
    assert model.encoder.embed_in.weight.grad is not None and model.encoder.embed_in.weight.grad.abs().sum() > 0


def _slots(side=5, seed=0):
    torch.manual_seed(seed)
    return build_encoder("colour_slots", hidden_size=32, num_heads=4, seq_len=side * side, puzzle_emb_len=12,
                         num_layers=1, expansion=2.0, set_layers=1)


def test_colour_slots_contract():
    assert "colour_slots" in ENCODERS
    with pytest.raises(ValueError, match="puzzle_emb_len"):
        build_encoder("colour_slots", hidden_size=32, num_heads=4, seq_len=25, puzzle_emb_len=8)
    enc = _slots().eval()
    batch = make_batch(B=2, D=3, n_demos=[2, 1])
    di, dl, dm = batch["demo_inputs"], batch["demo_labels"], batch["demo_mask"]
    with torch.no_grad():
        ref = enc(di, dl, dm).context
        di2, dl2 = di.clone(), dl.clone()
        di2[~dm] = torch.randint(0, 12, di2[~dm].shape)
        dl2[~dm] = torch.randint(0, 12, dl2[~dm].shape)
        garbage = enc(di2, dl2, dm).context
        perm = enc(di[:, [1, 0, 2]], dl[:, [1, 0, 2]], dm[:, [1, 0, 2]]).context
        large = _slots(side=7).eval()
        large.load_state_dict(enc.state_dict())

        def grow(t):
            g = torch.zeros(*t.shape[:2], 7, 7, dtype=t.dtype)
            g[..., :5, :5] = t.view(*t.shape[:2], 5, 5)
            return g.view(*t.shape[:2], 49)

        canvas = large(grow(di), grow(dl), dm).context
    assert ref.shape == (2, 12, 32) and torch.isfinite(ref).all()
    for other in (garbage, perm, canvas):
        torch.testing.assert_close(other, ref, atol=1e-4, rtol=1e-4)
    enc.train()
    out = enc(di, dl, dm).context
    out.square().sum().backward()
    assert all(p.grad is not None for n, p in enc.named_parameters() if n != "slot_absent")


def test_colour_table_adds_slot_c_to_cells_of_colour_c():
    model = TRMWithEncoder(tiny_config(encoder_type="colour_slots", puzzle_emb_len=12, context_colour_table=True))
    batch = make_batch(B=2, D=3)
    inputs = batch["inputs"]
    context = torch.randn(2, 12, 32)
    base = model.inner.input_embeddings(inputs, context)
    c = int(inputs[0][inputs[0] >= 2][0]) - 2  # a colour present in row 0
    bumped = context.clone()
    bumped[:, c] += 1.0
    moved = (model.inner.input_embeddings(inputs, bumped) - base).abs().sum(-1) > 1e-6  # [B, P + S]
    expect = torch.cat([torch.zeros(2, 12, dtype=torch.bool), inputs == c + 2], dim=1)
    expect[:, c] = True  # the context token itself
    assert torch.equal(moved, expect)
    # without the flag the query embeddings do not see the context
    plain = TRMWithEncoder(tiny_config(encoder_type="colour_slots", puzzle_emb_len=12))
    a, b = plain.inner.input_embeddings(inputs, context), plain.inner.input_embeddings(inputs, bumped)
    torch.testing.assert_close(a[:, 12:], b[:, 12:])


def test_colour_table_needs_a_slot_encoder():
    with pytest.raises(ValueError, match="colour_slots"):
        TRMWithEncoder(tiny_config(encoder_type="standard", context_colour_table=True))
