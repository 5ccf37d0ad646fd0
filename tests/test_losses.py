import math

import pytest
import torch
import torch.nn.functional as F

from models.losses import (ACTLossHead, context_contrast_loss, sample_accuracies, softmax_cross_entropy,
                           stablemax_cross_entropy, token_weights)
from models.recursive_reasoning.etrm import TRMWithEncoder
from tests.helpers import make_batch, tiny_config


def test_stablemax_matches_formula():
    logits = torch.tensor([[2.0, -1.0, 0.0], [0.5, -3.0, 1.0]])
    labels = torch.tensor([0, 1])
    # s = [3, 1/2, 1] and [1.5, 1/4, 2]
    expected = torch.tensor([-math.log(3 / 4.5), -math.log(0.25 / 3.75)], dtype=torch.float64)
    loss = stablemax_cross_entropy(logits, labels)
    assert loss.dtype == torch.float64
    torch.testing.assert_close(loss, expected)


def test_stablemax_ignores_and_grad_finite():
    logits = torch.tensor([[[5.0, -2.0, 1.0], [1.0, 2.0, 3.0]]], requires_grad=True)
    labels = torch.tensor([[2, -100]])
    loss = stablemax_cross_entropy(logits, labels)
    assert loss[0, 1] == 0 and loss[0, 0] > 0
    loss.sum().backward()
    assert torch.isfinite(logits.grad).all() and (logits.grad[0, 1] == 0).all()


def test_softmax_cross_entropy_ignores():
    logits = torch.randn(2, 5, 12)
    labels = torch.randint(0, 12, (2, 5))
    labels[0, 2] = -100
    loss = softmax_cross_entropy(logits, labels)
    assert loss.shape == (2, 5) and loss[0, 2] == 0
    ref = F.cross_entropy(logits[1], labels[1], reduction="none")
    torch.testing.assert_close(loss[1], ref)


def test_unknown_loss_type():
    with pytest.raises(ValueError, match="softmax_cross_entropy"):
        ACTLossHead(torch.nn.Linear(1, 1), loss_type="focal")


@pytest.mark.parametrize("encoder,kl_weight,has_kl", [
    ("hybrid_variational", 1e-2, True),
    ("hybrid_variational", 0.0, False),
    ("standard", 1e-2, False),
])
def test_loss_composition_and_kl(encoder, kl_weight, has_kl):
    torch.manual_seed(0)
    head = ACTLossHead(TRMWithEncoder(tiny_config(encoder_type=encoder)), kl_weight=kl_weight)
    batch = make_batch()
    torch.manual_seed(1)
    carry, loss, m, out, _ = head(head.initial_carry(batch), batch)
    assert ("kl" in out) == (encoder == "hybrid_variational")
    assert (float(m["kl_loss"]) > 0) == has_kl  # always logged, 0 when the term is off
    expected = m["lm_loss"] + 0.5 * m["q_halt_loss"] + (kl_weight * m["kl_loss"] if has_kl else 0)
    torch.testing.assert_close(loss.detach().float(), expected.float())
    # lm_loss = sum over samples of mean token loss
    labels = batch["labels"]
    tok = stablemax_cross_entropy(out["logits"].detach(), labels)
    per_sample = tok.sum(-1) / (labels != -100).sum(-1)
    torch.testing.assert_close(m["lm_loss"], per_sample.sum().float())
    if has_kl:
        torch.testing.assert_close(m["kl_loss"], out["kl"].detach().sum())
    assert all(not v.requires_grad for v in m.values())


def test_metrics_over_halted_samples():
    torch.manual_seed(0)
    model = TRMWithEncoder(tiny_config(halt_max_steps=2)).eval()
    head = ACTLossHead(model)
    batch = make_batch()
    with torch.no_grad():
        carry, loss, m, out, all_halted = head(head.initial_carry(batch), batch)
        assert m["count"] == 0 and not all_halted and m["lm_loss"] > 0
        carry, loss, m, out, all_halted = head(carry, batch)
    assert all_halted and m["count"] == 4 and m["steps"] == 8
    assert torch.equal(out["preds"], out["logits"].argmax(-1))
    labels = batch["labels"]
    valid = labels != -100
    acc = ((out["preds"] == labels) & valid).sum(-1) / valid.sum(-1)
    torch.testing.assert_close(m["accuracy"], acc.sum().float())
    exact = (((out["preds"] == labels) | ~valid).all(-1))
    assert m["exact_accuracy"] == exact.sum()
    assert m["q_halt_accuracy"] == ((out["q_halt_logits"] >= 0) == exact).sum()
    # per sample (the curriculum's statistics): which halted, and their accuracies
    assert out["sample_done"].tolist() == [True] * 4
    token, changed = sample_accuracies(out["preds"], labels, batch["inputs"])
    torch.testing.assert_close(out["sample_accuracy"], acc.float())
    torch.testing.assert_close((out["sample_accuracy"], out["sample_changed_accuracy"]), (token, changed))


def test_sample_accuracies_on_all_cells_and_on_the_changed_ones():
    inputs = torch.tensor([[3, 3, 4, 4, 5, 0], [3, 3, 4, 4, 5, 0]])
    labels = torch.tensor([[3, 7, 4, 9, 5, -100], [3, 3, 4, 4, 5, -100]])  # row 1: the rule changes nothing
    preds = torch.tensor([[3, 7, 4, 4, 5, 8], [3, 3, 6, 4, 5, 8]])  # row 0 copies cell 3 (changed: 7 right, 9 wrong)
    token, changed = sample_accuracies(preds, labels, inputs)
    torch.testing.assert_close(token, torch.tensor([4 / 5, 4 / 5]))
    torch.testing.assert_close(changed, torch.tensor([1 / 2, 4 / 5]))
    # the input copied: right on every unchanged cell, 0 on the changed ones
    torch.testing.assert_close(sample_accuracies(inputs, labels, inputs)[1], torch.tensor([0.0, 1.0]))


def test_invalid_rows_excluded():
    torch.manual_seed(0)
    head = ACTLossHead(TRMWithEncoder(tiny_config(halt_max_steps=1))).eval()
    batch = make_batch()
    batch["valid"] = torch.tensor([True, True, False, False])
    with torch.no_grad():
        _, loss_half, m, out, _ = head(head.initial_carry(batch), batch)
        batch2 = {k: v[:2] for k, v in batch.items()}
        _, loss_two, m2, _, _ = head(head.initial_carry(batch2), batch2)
    assert m["count"] == 2 and out["sample_done"].tolist() == [True, True, False, False]
    torch.testing.assert_close(loss_half.float(), loss_two.float(), atol=1e-4, rtol=1e-4)


def test_changed_cells_weigh_more_and_weights_sum_to_one():
    # one sample, 5 scored cells (one ignored): the label differs from the input at 2 of them
    inputs = torch.tensor([[3, 3, 4, 4, 5, 0]])
    labels = torch.tensor([[3, 7, 4, 9, 5, -100]])
    w = token_weights(labels, inputs, changed_cell_weight=4.0)
    total = 3 * 1.0 + 2 * 5.0
    torch.testing.assert_close(w, torch.tensor([[1, 5, 1, 5, 1, 0]]) / total)
    # 0 is the plain per-token mean (TRM's loss)
    torch.testing.assert_close(token_weights(labels, inputs, 0.0), torch.tensor([[1, 1, 1, 1, 1, 0]]) / 5.0)


def test_changed_cell_weight_moves_the_loss_onto_the_changed_cells():
    torch.manual_seed(0)
    model = TRMWithEncoder(tiny_config(halt_max_steps=1))
    batch = make_batch()
    changed = (batch["labels"] != batch["inputs"]) & (batch["labels"] != -100)
    assert changed.any() and (~changed & (batch["labels"] != -100)).any()
    losses = {}
    for weight in (0.0, 4.0):
        head = ACTLossHead(model, changed_cell_weight=weight).eval()
        with torch.no_grad():
            _, _, m, out, _ = head(head.initial_carry(batch), batch)
        losses[weight] = m["lm_loss"]
    tok = stablemax_cross_entropy(out["logits"], batch["labels"])
    w = torch.where(changed, 5.0, 1.0) * (batch["labels"] != -100)
    torch.testing.assert_close(losses[4.0], ((tok * w).sum(-1) / w.sum(-1)).sum().float())
    assert not torch.isclose(losses[4.0], losses[0.0])
    with pytest.raises(ValueError, match="changed_cell_weight"):
        ACTLossHead(model, changed_cell_weight=-1.0)


def _info_nce_by_hand(z, anchor, positives, candidates, t):
    """-mean over positives of log softmax over candidates (cosine / t), one anchor at a time."""
    z = F.normalize(z.flatten(1), dim=-1)
    sim = {j: float(z[anchor] @ z[j]) / t for j in candidates}
    log_norm = math.log(sum(math.exp(v) for v in sim.values()))
    return -sum(sim[j] - log_norm for j in positives) / len(positives)


def test_context_contrast_pairs_same_puzzle_same_variant_against_other_puzzles():
    torch.manual_seed(0)
    ctx = torch.randn(6, 2, 3)
    # rows 0,1: puzzle 0 variant 0 (positives of each other); row 2: puzzle 0 under another variant
    # (neither); rows 3,4: puzzle 1; row 5: puzzle 2, alone (no positive), but a negative for others
    puzzle = torch.tensor([0, 0, 0, 1, 1, 2])
    variant = torch.tensor([0, 0, 1, 0, 0, 0])
    valid = torch.ones(6, dtype=torch.bool)
    total, rows = context_contrast_loss(ctx, puzzle, variant, valid, temperature=0.5)
    expected = (_info_nce_by_hand(ctx, 0, [1], [1, 3, 4, 5], 0.5) + _info_nce_by_hand(ctx, 1, [0], [0, 3, 4, 5], 0.5)
                + _info_nce_by_hand(ctx, 3, [4], [0, 1, 2, 4, 5], 0.5) + _info_nce_by_hand(ctx, 4, [3], [0, 1, 2, 3, 5], 0.5))
    assert int(rows) == 4
    torch.testing.assert_close(total, torch.tensor(expected), atol=1e-5, rtol=1e-5)
    # an invalid (padding) row is nobody's negative or positive
    valid[4] = False
    total, rows = context_contrast_loss(ctx, puzzle, variant, valid, temperature=0.5)
    expected = _info_nce_by_hand(ctx, 0, [1], [1, 3, 5], 0.5) + _info_nce_by_hand(ctx, 1, [0], [0, 3, 5], 0.5)
    assert int(rows) == 2
    torch.testing.assert_close(total, torch.tensor(expected), atol=1e-5, rtol=1e-5)
    # agreeing contexts within a puzzle and distinct ones across puzzles score lower
    pairs, zeros, ones = torch.tensor([0, 0, 1, 1, 2, 2]), torch.zeros(6, dtype=torch.long), torch.ones(6, dtype=torch.bool)
    tidy = torch.eye(3).repeat_interleave(2, 0)[:, None, :].expand(6, 2, 3)
    assert context_contrast_loss(tidy, pairs, zeros, ones, 0.5)[0] < context_contrast_loss(ctx, pairs, zeros, ones, 0.5)[0]


def test_context_contrast_weight_zero_is_the_old_loss_and_its_gradient_reaches_only_the_encoder():
    torch.manual_seed(0)
    model = TRMWithEncoder(tiny_config(halt_max_steps=1))
    batch = make_batch(rules=[0, 0, 1, 1])
    batch["puzzle_index"] = torch.tensor([0, 0, 1, 1])  # two puzzles, each read from two demo sets
    batch["variant_index"] = torch.zeros(4, dtype=torch.long)
    losses, grads = {}, {}
    for weight in (None, 0.0, 1.0):
        head = ACTLossHead(model) if weight is None else ACTLossHead(model, context_contrast_weight=weight)
        model.zero_grad()
        _, loss, m, out, _ = head(head.initial_carry(batch), batch)
        loss.backward()
        losses[weight], grads[weight] = loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                                                        if p.grad is not None}
        assert ("contrast_loss" in m) == bool(weight)
    assert torch.equal(losses[None], losses[0.0])  # the option off: exactly the loss without it
    contrast, rows = context_contrast_loss(out["context"].detach(), batch["puzzle_index"], batch["variant_index"],
                                           batch["valid"], 0.1)
    assert int(rows) == 4 and contrast > 0
    torch.testing.assert_close(losses[1.0] - losses[0.0], contrast, atol=1e-4, rtol=1e-4)
    moved = {n for n in grads[1.0] if not torch.allclose(grads[1.0][n], grads[0.0].get(n, torch.zeros_like(grads[1.0][n])))}
    assert moved and all(n.startswith("encoder.") for n in moved), sorted(moved)
    with pytest.raises(ValueError, match="context_contrast"):
        ACTLossHead(model, context_contrast_weight=1.0, context_contrast_temperature=0.0)
