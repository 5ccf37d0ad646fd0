"""AdamATan2 with TRM's settings, warmup + cosine learning rate, and an EMA of the weights."""
from __future__ import annotations

import copy
import math

import torch
from adam_atan2_pytorch import AdamAtan2
from torch import nn


def build_optimizer(model: nn.Module, lr: float, beta1: float, beta2: float, weight_decay: float) -> torch.optim.Optimizer:
    return AdamAtan2(model.parameters(), lr=lr, betas=(beta1, beta2), weight_decay=weight_decay)


def lr_at(step: int, base_lr: float, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Linear warmup to base_lr, then cosine down to base_lr * min_ratio at total_steps."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return base_lr * (min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress)))


def clipped_step(optimizer: torch.optim.Optimizer, grads: list[torch.Tensor], grad_norm: float, clip_norm: float,
                 loss: float) -> bool:
    """The update of a training step: skipped (False) when the loss or the gradient norm is not
    finite; else the gradients scaled down to clip_norm (0: no clipping) and the optimizer stepped."""
    if not (math.isfinite(loss) and math.isfinite(grad_norm)):
        return False
    if clip_norm and grad_norm > clip_norm:
        torch._foreach_mul_(grads, clip_norm / (grad_norm + 1e-6))
    optimizer.step()
    return True


class EMA:
    """Exponential moving average of a model's parameters and buffers, held in a copy used for eval."""

    def __init__(self, model: nn.Module, rate: float):
        self.rate = rate
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        ema_state, state = self.model.state_dict(), model.state_dict()
        floats = [name for name, value in state.items() if value.dtype.is_floating_point]
        torch._foreach_lerp_([ema_state[n] for n in floats], [state[n] for n in floats], 1.0 - self.rate)
        for name, value in state.items():
            if not value.dtype.is_floating_point:
                ema_state[name].copy_(value)

    def state_dict(self) -> dict:
        return self.model.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state)
