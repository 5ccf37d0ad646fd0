import pytest
import torch

from models import load_loss_class, load_model_class
from models.losses import ACTLossHead
from models.recursive_reasoning.etrm import ETRMConfig, TRMWithEncoder
from tests.helpers import make_batch, tiny_config


def _model(seed=0, **kw):
    torch.manual_seed(seed)
    return TRMWithEncoder(tiny_config(**kw))


def _set_q_bias(model, value):
    with torch.no_grad():
        model.inner.q_head.bias.fill_(value)


def test_config_from_dict_errors():
    with pytest.raises(ValueError) as e:
        ETRMConfig.from_dict(tiny_config(puzzle_emb_ndim=512, bogus=1))
    msg = str(e.value)
    assert "bogus" in msg and "puzzle_emb_ndim" in msg and "hidden_size" in msg
    with pytest.raises(ValueError, match="rope_2d"):
        ETRMConfig.from_dict(tiny_config(pos_encodings="learned"))
    with pytest.raises(ValueError, match="hybrid_variational"):
        TRMWithEncoder(tiny_config(encoder_type="vae"))
    with pytest.raises(ValueError, match="seq_len"):
        ETRMConfig.from_dict({"batch_size": 2})


def test_registry_loaders():
    assert load_model_class("recursive_reasoning.etrm@TRMWithEncoder") is TRMWithEncoder
    assert load_loss_class("losses@ACTLossHead") is ACTLossHead
    with pytest.raises(ValueError, match="recursive_reasoning.etrm"):
        load_model_class("recursive_reasoning.trm@TRMWithEncoder")
    with pytest.raises(ValueError, match="TRMWithEncoder"):
        load_model_class("recursive_reasoning.etrm@Nope")
    with pytest.raises(ValueError, match="ACTLossHead"):
        load_loss_class("losses@Nope")


@pytest.mark.parametrize("pos", ["rope", "rope_2d", "none"])
@pytest.mark.parametrize("encoder", ["standard", "hybrid_standard", "hybrid_variational"])
def test_forward_shapes_and_init(pos, encoder):
    model = _model(pos_encodings=pos, encoder_type=encoder)
    batch = make_batch()
    carry = model.initial_carry(batch)
    assert carry.halted.all()
    carry, out = model(carry, batch)
    assert out["logits"].shape == (4, 25, 12)
    assert out["q_halt_logits"].shape == (4,) and out["q_continue_logits"].shape == (4,)
    assert out["context"].shape == (4, 4, 32)
    assert ("kl" in out) == (encoder == "hybrid_variational")
    # Q head starts at weights 0, bias -5
    torch.testing.assert_close(out["q_halt_logits"], torch.full((4,), -5.0))
    assert carry.z_H.shape == (4, 4 + 25, 32) and not carry.z_H.requires_grad
    for k, v in batch.items():
        assert torch.equal(carry.current_data[k], v)


def test_eval_runs_exactly_halt_max_steps():
    model = _model(halt_max_steps=3).eval()
    _set_q_bias(model, 5.0)  # q says "halt" everywhere: eval ignores it by default
    batch = make_batch()
    carry = model.initial_carry(batch)
    with torch.no_grad():
        for step in range(1, 4):
            carry, out = model(carry, batch)
            assert (out["steps"] == step).all()
            assert carry.halted.all() == (step == 3)


def test_eval_halting_q():
    model = _model(halt_max_steps=3, eval_halting="q").eval()
    _set_q_bias(model, 5.0)
    batch = make_batch()
    with torch.no_grad():
        carry, out = model(model.initial_carry(batch), batch)
    assert carry.halted.all() and (out["steps"] == 1).all()


def test_training_halting_with_exploration():
    max_steps = 5
    model = _model(halt_max_steps=max_steps, halt_exploration_prob=0.5, H_cycles=1, L_cycles=1).train()
    _set_q_bias(model, 5.0)  # q says halt at once, exploration forces some samples to go on
    batch = make_batch(B=16, seed=3)
    carry = model.initial_carry(batch)
    halting_steps = []
    torch.manual_seed(0)
    with torch.no_grad():
        for _ in range(12):
            carry, out = model(carry, batch)
            h = carry.halted
            halting_steps += out["steps"][h].tolist()
            # a slot halts exactly at max(1, its exploration minimum)
            expected = torch.clamp(carry.min_halt_steps, min=1)
            assert torch.equal(out["steps"][h], expected[h])
            assert (out["steps"] <= max_steps).all()
    assert min(halting_steps) == 1 and max(halting_steps) >= 2
    assert all(1 <= s <= max_steps for s in halting_steps)
    assert len(set(halting_steps)) >= 3


def test_training_halts_at_max_without_q():
    model = _model(halt_max_steps=3).train()  # q bias -5: never halts early
    batch = make_batch()
    carry = model.initial_carry(batch)
    with torch.no_grad():
        for step in range(1, 4):
            carry, out = model(carry, batch)
            assert carry.halted.all() == (step == 3)


def test_halted_slots_reload_and_reset_unhalted_keep():
    model = _model(halt_max_steps=4).eval()
    b1, b2 = make_batch(seed=1), make_batch(seed=2)
    with torch.no_grad():
        carry, _ = model(model.initial_carry(b1), b1)
        mask = torch.tensor([True, False, True, False])
        carry.halted = mask.clone()
        new, out = model(carry, b2)
        # reference 1: slots that halted behave exactly like a fresh start on b2
        fresh, out_fresh = model(model.initial_carry(b2), b2)
        # reference 2: slots that did not halt continue their b1 sample
        carry_cont, _ = model(model.initial_carry(b1), b1)
        carry_cont.halted = torch.zeros(4, dtype=torch.bool)
        cont, out_cont = model(carry_cont, b2)
    for k in b1:
        torch.testing.assert_close(new.current_data[k][mask], b2[k][mask])
        torch.testing.assert_close(new.current_data[k][~mask], b1[k][~mask])
    assert new.steps.tolist() == [1, 2, 1, 2]
    torch.testing.assert_close(out["logits"][mask], out_fresh["logits"][mask], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["logits"][~mask], out_cont["logits"][~mask], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(new.z_H[mask], fresh.z_H[mask], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(new.z_H[~mask], cont.z_H[~mask], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("encoder", ["standard", "hybrid_variational"])
def test_encoder_gets_gradient_every_act_step(encoder):
    model = _model(halt_max_steps=3, encoder_type=encoder).train()
    head = ACTLossHead(model)
    batch = make_batch()
    carry = head.initial_carry(batch)
    for step in range(3):
        model.zero_grad(set_to_none=True)
        carry, loss, metrics, out, all_halted = head(carry, batch)
        loss.backward()
        enc_grad = sum(p.grad.abs().sum() for p in model.encoder.parameters() if p.grad is not None)
        assert enc_grad > 0, f"no encoder gradient at ACT step {step + 1}"
        inner_grads = [p.grad for p in model.inner.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in inner_grads)
    assert bool(all_halted)


def test_context_ablation_zero_context():
    model = _model(context_ablation=True, encoder_type="hybrid_variational")
    head = ACTLossHead(model)
    batch = make_batch()
    carry, loss, metrics, out, _ = head(head.initial_carry(batch), batch)
    assert torch.count_nonzero(out["context"]) == 0
    assert "kl" not in out
    loss.backward()
    assert all(p.grad is None for p in model.encoder.parameters())
    # demos are ignored entirely
    other = dict(batch, demo_inputs=torch.randint(0, 12, batch["demo_inputs"].shape))
    model.eval()
    with torch.no_grad():
        a = model(model.initial_carry(batch), batch)[1]["logits"]
        b = model(model.initial_carry(other), other)[1]["logits"]
    torch.testing.assert_close(a, b)


def test_demos_change_prediction():
    model = _model().eval()
    batch = make_batch()
    other = dict(batch, demo_labels=make_batch(seed=9)["demo_labels"])
    with torch.no_grad():
        a = model(model.initial_carry(batch), batch)[1]["logits"]
        b = model(model.initial_carry(other), other)[1]["logits"]
    assert not torch.allclose(a, b, atol=1e-4)
