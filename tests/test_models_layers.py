import pytest
import torch

from models.layers import Attention, Block, apply_rotary, rms_norm, rope_1d, rope_2d, swiglu_hidden_size, trunc_normal_

torch.set_num_threads(2)


def test_rms_norm_unit_rms_no_params():
    x = torch.randn(3, 7, 16) * 5
    y = rms_norm(x)
    assert torch.allclose(y.square().mean(-1), torch.ones(3, 7), atol=1e-4)


def test_swiglu_hidden_size():
    assert swiglu_hidden_size(512, 4.0) == 1536
    assert swiglu_hidden_size(64, 4.0) % 64 == 0 and swiglu_hidden_size(64, 4.0) >= 170


def test_trunc_normal_std():
    t = trunc_normal_(torch.empty(200_000), std=0.5)
    assert abs(t.std().item() - 0.5) < 0.01 and t.abs().max() <= 2 * 0.5 / 0.8796 + 1e-4


@pytest.mark.parametrize("kind", ["1d", "2d"])
def test_rope_is_relative(kind):
    """q.k after rotation depends only on the position difference."""
    d = 16
    q, k = torch.randn(1, 1, 1, d), torch.randn(1, 1, 1, d)

    def score(pq, pk):
        if kind == "1d":
            cs = rope_1d(torch.tensor([pq, pk]), d)
        else:
            cs = rope_2d(torch.tensor([pq[0], pk[0]]), torch.tensor([pq[1], pk[1]]), d)
        qr = apply_rotary(q, (cs[0][:1], cs[1][:1]))
        kr = apply_rotary(k, (cs[0][1:], cs[1][1:]))
        return (qr * kr).sum()

    if kind == "1d":
        assert torch.allclose(score(3, 5), score(10, 12), atol=1e-5)
        assert not torch.allclose(score(3, 5), score(3, 9), atol=1e-3)
    else:
        assert torch.allclose(score((1, 2), (3, 1)), score((4, 4), (6, 3)), atol=1e-5)
        assert not torch.allclose(score((1, 2), (3, 1)), score((1, 2), (1, 3)), atol=1e-3)


def test_attention_key_mask_and_empty_rows_finite():
    attn = Attention(32, 4)
    x = torch.randn(2, 6, 32)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0]], dtype=torch.bool)
    y = attn(x, key_mask=mask)
    assert torch.isfinite(y).all()
    # masked keys have no influence
    x2 = x.clone()
    x2[0, 3:] = torch.randn(3, 32)
    assert torch.allclose(attn(x2, key_mask=mask)[0, :3], y[0, :3], atol=1e-6)


def test_block_post_norm_output():
    blk = Block(32, 4, 4.0)
    y = blk(torch.randn(2, 5, 32))
    assert torch.allclose(y.square().mean(-1), torch.ones(2, 5), atol=1e-3)
