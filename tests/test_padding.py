"""The packed encoder layout (real demo slots only, each pair at its own non-PAD tokens) computes
the same thing as the padded one (every slot at 2S tokens, PAD masked), to float tolerance."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from models.encoders import build_encoder
from models.encoders.common import PACK_BUCKETS, pack_bucket
from models.layers import _rotate_half, apply_rotary, rope_1d, rope_2d
from models.losses import ACTLossHead
from models.recursive_reasoning.etrm import TRMWithEncoder
from tests.helpers import PADDING_SIDE as SIDE, ragged_batch

torch.set_num_threads(2)
ENCODERS = [("standard", "mean"), ("standard", "attention"), ("hybrid_standard", "mean"), ("hybrid_variational", "mean"),
            ("cell_perceiver", "mean"), ("colour_slots", "mean")]


def _encoder(kind: str, pooling: str, packed: bool):
    torch.manual_seed(0)
    return build_encoder(kind, hidden_size=32, num_heads=4, seq_len=SIDE * SIDE, num_layers=2, expansion=2.0,
                         pooling=pooling, set_layers=1, puzzle_emb_len=12 if kind == "colour_slots" else 4, packed=packed)


@pytest.mark.parametrize("kind,pooling", ENCODERS)
def test_packed_matches_padded(kind, pooling):
    batch = ragged_batch()
    args = (batch["demo_inputs"], batch["demo_labels"], batch["demo_mask"])
    padded, packed = _encoder(kind, pooling, False).eval(), _encoder(kind, pooling, True).eval()
    out_pad, out_pack = padded(*args), packed(*args)
    torch.testing.assert_close(out_pack.context, out_pad.context, rtol=1e-4, atol=1e-5)
    if out_pad.kl is not None:
        torch.testing.assert_close(out_pack.kl, out_pad.kl, rtol=1e-4, atol=1e-5)
    # and the gradients agree too
    w = torch.randn_like(out_pad.context)
    (out_pad.context * w).sum().backward()
    (out_pack.context * w).sum().backward()
    for (name, p1), (_, p2) in zip(padded.named_parameters(), packed.named_parameters()):
        g1 = p1.grad if p1.grad is not None else torch.zeros_like(p1)
        g2 = p2.grad if p2.grad is not None else torch.zeros_like(p2)
        torch.testing.assert_close(g2, g1, rtol=1e-3, atol=1e-5, msg=name)


@pytest.mark.parametrize("kind", ["standard", "hybrid_standard", "colour_slots"])
def test_packed_ignores_masked_slots_and_pad(kind):
    """Changing what sits in masked demo slots changes nothing."""
    batch = ragged_batch()
    enc = _encoder(kind, "mean", True).eval()
    ref = enc(batch["demo_inputs"], batch["demo_labels"], batch["demo_mask"]).context
    junk_in, junk_out = batch["demo_inputs"].clone(), batch["demo_labels"].clone()
    junk_in[~batch["demo_mask"]] = 5
    junk_out[~batch["demo_mask"]] = 7
    torch.testing.assert_close(enc(junk_in, junk_out, batch["demo_mask"]).context, ref)


def test_full_model_step_packed_matches_padded():
    cfg = dict(batch_size=3, seq_len=SIDE * SIDE, vocab_size=12, max_demos=4, puzzle_emb_len=4, hidden_size=32,
               num_heads=4, expansion=2.0, H_cycles=2, L_cycles=2, L_layers=1, halt_max_steps=4,
               halt_exploration_prob=0.0, encoder_num_layers=1, encoder_set_layers=1)
    batch = ragged_batch()
    results = []
    for packed in (False, True):
        torch.manual_seed(0)
        head = ACTLossHead(TRMWithEncoder(dict(cfg, encoder_packed=packed)))
        head.train()
        _, loss, _, out, _ = head(head.initial_carry(batch), batch)
        loss.backward()
        results.append((loss.detach(), out["logits"].detach(), {n: p.grad.clone() for n, p in head.named_parameters()
                                                               if p.grad is not None}))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(results[1][1], results[0][1], rtol=1e-4, atol=1e-4)
    assert results[0][2].keys() == results[1][2].keys()
    for n in results[0][2]:
        torch.testing.assert_close(results[1][2][n], results[0][2][n], rtol=1e-3, atol=1e-5, msg=n)


def test_set_encoder_packing_switches_layout():
    cfg = dict(batch_size=3, seq_len=SIDE * SIDE, vocab_size=12, max_demos=4, puzzle_emb_len=4, hidden_size=32,
               num_heads=4, expansion=2.0, H_cycles=1, L_cycles=1, L_layers=1, encoder_type="hybrid_standard")
    model = TRMWithEncoder(cfg)
    assert model.encoder.pair.packed
    model.set_encoder_packing(False)
    assert not model.encoder.pair.packed and not model.config.encoder_packed


def test_pack_bucket():
    assert pack_bucket(1, 1800) == PACK_BUCKETS[0]
    assert pack_bucket(200, 1800) == 224
    assert pack_bucket(1800, 1800) == 1800
    for n in range(1, 1801, 7):
        b = pack_bucket(n, 1800)
        assert n <= b <= 1800 and b - n <= max(32, 0.34 * n)


@pytest.mark.parametrize("two_d", [False, True])
def test_apply_rotary_matches_rotate_half_and_per_sample_tables(two_d):
    L, hd = 7, 8
    pos = torch.arange(L)
    cs = rope_2d(pos // 3, pos % 3, hd) if two_d else rope_1d(pos, hd)
    x = torch.randn(2, 3, L, hd)
    ref = x * cs[0] + _rotate_half(x) * cs[1]
    torch.testing.assert_close(apply_rotary(x, cs), ref)
    per_sample = (cs[0].expand(2, L, hd), cs[1].expand(2, L, hd))
    torch.testing.assert_close(apply_rotary(x, per_sample), ref)


def test_rotary_qk_and_attention_match_reference():
    """The fused q/k rotary of self-attention equals the per-head reference formula."""
    import torch.nn.functional as F
    from models.layers import Attention, apply_rotary_qk
    torch.manual_seed(0)
    B, L, H, heads = 2, 9, 32, 4
    attn = Attention(H, heads)
    x = torch.randn(B, L, H)
    pos = torch.arange(L)
    cs = rope_2d(pos // 3, pos % 3, H // heads)
    qkv = attn.qkv_proj(x)
    q, k, v = (t.view(B, L, heads, -1).transpose(1, 2) for t in qkv.chunk(3, dim=-1))
    rq = q * cs[0] + _rotate_half(q) * cs[1]
    rk = k * cs[0] + _rotate_half(k) * cs[1]
    ref = attn.o_proj(F.scaled_dot_product_attention(rq, rk, v).transpose(1, 2).reshape(B, L, H))
    torch.testing.assert_close(attn(x, cos_sin=cs), ref)
    qk = apply_rotary_qk(qkv.view(B, L, 3, heads, -1)[:, :, :2], (cs[0].expand(B, L, -1), cs[1].expand(B, L, -1)))
    torch.testing.assert_close(qk[:, :, 0].transpose(1, 2), rq)
