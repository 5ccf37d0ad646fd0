"""The tiny model must memorise a small fixed batch through the real ACT training loop."""
import pytest
import torch

from models.losses import ACTLossHead
from models.recursive_reasoning.etrm import TRMWithEncoder
from tests.helpers import make_batch, tiny_config


def _evaluate(head, batch):
    head.eval()
    with torch.no_grad():
        carry = head.initial_carry(batch)
        while True:
            carry, _, metrics, _, all_halted = head(carry, batch)
            if all_halted:
                return metrics


@pytest.mark.parametrize("encoder", ["standard", "hybrid_variational"])
def test_overfits_small_batch(encoder):
    torch.manual_seed(0)
    model = TRMWithEncoder(tiny_config(
        hidden_size=64, num_heads=4, expansion=4.0, L_layers=2, H_cycles=2, L_cycles=2,
        halt_max_steps=2, halt_exploration_prob=0.1, encoder_type=encoder,
    ))
    head = ACTLossHead(model, kl_weight=1e-4)
    batch = make_batch(B=4, D=3, side=5, seed=0, n_demos=[3, 2, 3, 1])
    opt = torch.optim.AdamW(head.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.0)
    carry = head.initial_carry(batch)
    exact = 0.0
    for step in range(1, 301):
        head.train()
        carry, loss, _, _, _ = head(carry, batch)
        opt.zero_grad(set_to_none=True)
        (loss / 4).backward()
        opt.step()
        if step % 10 == 0:
            metrics = _evaluate(head, batch)
            assert metrics["count"] == 4
            exact = metrics["exact_accuracy"].item()
            if exact == 4:
                break
    print(f"{encoder}: {exact}/4 exact after {step} steps")
    assert exact == 4, f"only {exact}/4 exact after {step} steps"
