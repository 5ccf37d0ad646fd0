"""The `cell_perceiver` encoder keeps the encoder contract (shapes, gradients, PAD / masked demo
slots / demo order / canvas size do not change the context) and sees what a pooled demo vector
averages away: two demos that differ only in which two colours are exchanged."""
from __future__ import annotations

import numpy as np
import torch

from dataset.grids import encode_grid
from models.encoders import ENCODERS
from models.recursive_reasoning.etrm import TRMWithEncoder
from tests import test_models_encoders as encoder_tests
from tests.test_models_fixtures import make_batch, tiny_config


def test_registered():
    assert "cell_perceiver" in ENCODERS


def test_forward_backward_finite():
    enc = encoder_tests._enc("cell_perceiver").train()
    out = enc(*encoder_tests._demos(make_batch(B=3, D=3, n_demos=[1, 2, 3])))
    assert out.context.shape == (3, 4, 32) and out.kl is None
    (out.context.square().sum() + out.context.sum()).backward()
    grads = [p.grad for p in enc.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_pad_masked_slots_order_and_canvas_invariance():
    encoder_tests.test_padding_invariance("cell_perceiver", "mean")
    encoder_tests.test_canvas_size_invariance("cell_perceiver", "mean")


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

    enc = encoder_tests._enc("cell_perceiver").eval()
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
