"""arch.local_mix: every canvas cell mixes its k x k neighbourhood before each block of the inner
model (models/layers.py LocalMix). Checked: the mix reads the right neighbours on a hand-made
canvas (row-major cells, zero beyond the edge, context tokens untouched), a model with it equals
the model without it at step 0, its weights get a gradient at every ACT step, and the Hydra
config builds it and refuses an even kernel."""
from __future__ import annotations

import pytest
import torch

from models.config import ETRMConfig
from models.layers import LocalMix
from models.recursive_reasoning.etrm import TRMWithEncoder
from tests.helpers import assert_gradient_every_act_step, build_and_step, make_batch, tiny_config


def test_reads_the_cell_above_on_a_hand_made_canvas():
    side, H, P = 3, 2, 2
    mix = LocalMix(H, side)
    with torch.no_grad():
        mix.conv.weight.zero_()
        mix.conv.weight[:, 0, 0, 1] = 1.0        # kernel tap (row - 1, same column), both channels
        mix.o_proj.weight.copy_(torch.eye(H))
    cells = torch.arange(side * side, dtype=torch.float32) + 1  # cell (r, c) holds 1 + 3r + c
    h = torch.cat([torch.full((P, H), 100.0), cells[:, None].expand(-1, H)]).unsqueeze(0)
    out = mix(h)[0]
    assert torch.equal(out[:P], torch.zeros(P, H))              # context tokens get no update
    above = torch.tensor([[0, 0, 0], [1, 2, 3], [4, 5, 6]], dtype=torch.float32).flatten()
    torch.testing.assert_close(out[P:, 0], above)               # row 0 reads zero beyond the edge
    torch.testing.assert_close(out[P:, 1], above)


def _with_mix_weights(model):
    for name, p in model.named_parameters():
        if "local_mix" in name and name.endswith("o_proj.weight"):
            torch.nn.init.normal_(p, std=0.2)
    return model


@pytest.mark.parametrize("encoder", ["standard", "colour_slots"])
def test_step_zero_equals_the_model_without_local_mix(encoder):
    batch = make_batch()
    kw = dict(encoder_type=encoder, puzzle_emb_len=12, map_read=True, pos_encodings="rope_2d")
    torch.manual_seed(0)
    with_mix = TRMWithEncoder(tiny_config(local_mix=3, **kw))
    without = TRMWithEncoder(tiny_config(**kw))
    missing, unexpected = without.load_state_dict(with_mix.state_dict(), strict=False)
    assert not missing and unexpected and all(".local_mix." in k for k in unexpected)
    a = with_mix(with_mix.initial_carry(batch), batch)[1]["logits"]
    b = without(without.initial_carry(batch), batch)[1]["logits"]
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    _with_mix_weights(with_mix)  # ... and once the projection moves, the mix changes the answer
    assert (with_mix(with_mix.initial_carry(batch), batch)[1]["logits"] - b).abs().max() > 1e-3


def test_local_mix_gets_gradient_every_act_step():
    torch.manual_seed(0)
    model = _with_mix_weights(TRMWithEncoder(tiny_config(local_mix=3, L_layers=2, halt_max_steps=3))).train()
    params = [(n, p) for n, p in model.named_parameters() if ".local_mix." in n]
    assert len(params) == 4  # conv + projection, per block
    assert_gradient_every_act_step(model, params, make_batch())


def test_hydra_config_builds_it_and_refuses_an_even_kernel():
    model, _ = build_and_step("cfg_pretrain_etrm_synthetic", ["arch.local_mix=3", "data_paths=[x]"])
    assert model.config.local_mix == 3 and len(model.inner.local_mix) == model.config.L_layers
    with pytest.raises(ValueError, match="local_mix must be 0 .off. or an odd kernel size, got 2"):
        ETRMConfig.from_dict(tiny_config(local_mix=2))
