import math

import pytest
import torch

from models.encoders import ENCODERS, build_encoder
from tests.helpers import demos_of as _demos, make_batch, small_encoder as _enc

VARIANTS = [
    ("standard", "mean"),
    ("standard", "attention"),
    ("hybrid_standard", "mean"),
    ("hybrid_variational", "mean"),
]


@pytest.mark.parametrize("kind,pooling", VARIANTS)
def test_forward_backward_finite(kind, pooling):
    enc = _enc(kind, pooling).train()
    batch = make_batch(B=3, D=3, n_demos=[1, 2, 3])
    out = enc(*_demos(batch))
    assert out.context.shape == (3, 4, 32)
    assert (out.kl is not None) == (kind == "hybrid_variational")
    loss = out.context.square().sum() + (out.kl.sum() if out.kl is not None else 0) + out.context.sum()
    loss.backward()
    grads = [p.grad for p in enc.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


# cell_perceiver keeps the pooled encoders' invariances too (tests/test_encoders_demo_tokens.py)
INVARIANT = VARIANTS + [("cell_perceiver", "mean")]


@pytest.mark.parametrize("kind,pooling", INVARIANT)
def test_padding_invariance(kind, pooling):
    enc = _enc(kind, pooling).eval()
    batch = make_batch(B=2, D=3, n_demos=[2, 1])
    di, dl, dm = _demos(batch)
    with torch.no_grad():
        ref = enc(di, dl, dm).context
        # extra masked-out demo slot (all PAD)
        pad = torch.zeros_like(di[:, :1])
        extra = enc(torch.cat([di, pad], 1), torch.cat([dl, pad], 1), torch.cat([dm, torch.zeros_like(dm[:, :1])], 1)).context
        # garbage tokens in the masked slots
        di2, dl2 = di.clone(), dl.clone()
        di2[~dm] = torch.randint(0, 12, di2[~dm].shape)
        dl2[~dm] = torch.randint(0, 12, dl2[~dm].shape)
        garbage = enc(di2, dl2, dm).context
        # demo order does not matter
        perm = enc(di[:, [1, 0, 2]], dl[:, [1, 0, 2]], dm[:, [1, 0, 2]]).context
    assert torch.isfinite(ref).all()
    torch.testing.assert_close(extra, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(garbage, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(perm, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind,pooling", INVARIANT)
def test_canvas_size_invariance(kind, pooling):
    """2-D relative positions + PAD masking: the same grids on a 5x5 or a 7x7 canvas (more PAD
    around them) give the same context."""
    small = _enc(kind, pooling, side=5).eval()
    large = _enc(kind, pooling, side=7, seed=1).eval()
    large.load_state_dict(small.state_dict())
    batch = make_batch(B=2, D=2, side=5, n_demos=[2, 1])
    di, dl, dm = _demos(batch)

    def grow(t):  # [B, D, 25] -> [B, D, 49], same top-left placement
        g = torch.zeros(*t.shape[:2], 7, 7, dtype=t.dtype)
        g[..., :5, :5] = t.view(*t.shape[:2], 5, 5)
        return g.view(*t.shape[:2], 49)

    with torch.no_grad():
        a = small(di, dl, dm).context
        b = large(grow(di), grow(dl), dm).context
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_demos_matter():
    enc = _enc("standard").eval()
    b1, b2 = make_batch(B=2, seed=0), make_batch(B=2, seed=1)
    with torch.no_grad():
        assert not torch.allclose(enc(*_demos(b1)).context, enc(*_demos(b2)).context, atol=1e-3)


def test_variational_eval_is_deterministic_and_kl():
    enc = _enc("hybrid_variational")
    batch = make_batch(B=2)
    enc.eval()
    with torch.no_grad():
        a, b = enc(*_demos(batch)), enc(*_demos(batch))
    torch.testing.assert_close(a.context, b.context)
    assert a.kl.shape == (2,) and (a.kl >= 0).all()
    enc.train()
    with torch.no_grad():
        c, d = enc(*_demos(batch)), enc(*_demos(batch))
    assert not torch.allclose(c.context, d.context)
    # logvar projection starts at zero
    assert enc.bottleneck.logvar.weight.abs().sum() == 0 and enc.bottleneck.logvar.bias.abs().sum() == 0


def test_registry_errors_list_choices():
    with pytest.raises(ValueError) as e:
        build_encoder("nope", hidden_size=32, num_heads=4, seq_len=25)
    for name in ENCODERS:
        assert name in str(e.value)
    with pytest.raises(ValueError, match="valid keys"):
        build_encoder("standard", hidden_size=32, num_heads=4, seq_len=25, bogus=1)
    with pytest.raises(ValueError, match="attention"):
        build_encoder("standard", hidden_size=32, num_heads=4, seq_len=25, pooling="max")


def test_variational_kl_is_the_closed_form():
    """KL(N(mu, exp(logvar)) || N(0, I)) = 0.5 * sum(mu^2 + exp(logvar) - 1 - logvar), for a known
    mu and logvar (the projections are set so that sample i reads column i)."""
    from models.encoders.common import EncoderConfig, VariationalBottleneck

    mu = torch.tensor([[1.0, -2.0, 0.0], [0.5, 0.0, 3.0]])
    logvar = torch.tensor([[0.0, 1.0, -1.5], [-1.0, 2.0, 0.0]])
    neck = VariationalBottleneck(EncoderConfig(hidden_size=4, num_heads=2, seq_len=4, puzzle_emb_len=2, latent_dim=3))
    with torch.no_grad():
        for proj, value in ((neck.mu, mu), (neck.logvar, logvar)):
            proj.weight.zero_()
            proj.weight[:, :2] = value.T
            proj.bias.zero_()
    pooled = torch.eye(4)[:2]
    expected = torch.distributions.kl_divergence(torch.distributions.Normal(mu, torch.exp(0.5 * logvar)),
                                                 torch.distributions.Normal(0.0, 1.0)).sum(-1)
    # by hand: 0.5 * (mu^2 5 + exp 1 + e + e^-1.5 - 3 - logvar 0.5) and 0.5 * (9.25 + e^-1 + e^2 + 1 - 3 - 1)
    by_hand = torch.tensor([0.5 * (3.5 + math.e + math.exp(-1.5)), 0.5 * (6.25 + math.exp(-1) + math.exp(2))])
    torch.testing.assert_close(expected, by_hand)
    for mode in (neck.train, neck.eval):
        mode()
        _, kl = neck(pooled)
        torch.testing.assert_close(kl, expected)
