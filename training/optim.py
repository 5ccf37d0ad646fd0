"""AdamATan2 with TRM's settings (a foreach implementation of the `adam-atan2-pytorch` package's
update), warmup + cosine learning rate, clipping and the non-finite skip without a host read, and an
EMA of the weights."""
from __future__ import annotations

import copy
import math

import torch
from torch import nn


class AdamATan2(torch.optim.Optimizer):
    """The update of `adam_atan2_pytorch.AdamAtan2` (its defaults a=1.27, b=1; no regenerative
    regularisation, no cautious variants), for all of a group's parameters at once with torch's
    `_foreach_*` ops instead of a Python loop of ~10 kernels per parameter (atan2 has no foreach
    kernel: one call per parameter). Per parameter, with t the number of updates taken:

        m <- lerp(m, g, 1 - beta1);  v <- lerp(v, g*g, 1 - beta2)
        p <- p * (1 - lr * wd) - lr * a * atan2(m / (1 - beta1^t), b * sqrt(v / (1 - beta2^t)))

    `step(ok=...)`: a 0-dim bool device tensor; where it is False the step leaves the parameters
    and every state (t included) as they were, decided on the device (no host read), and the
    gradients may then hold NaN/inf. The step count `steps` is a 0-dim float32 tensor per
    parameter (a checkpoint of the package's optimizer, with an int, loads as well)."""

    def __init__(self, params, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.99), weight_decay: float = 0.0,
                 a: float = 1.27, b: float = 1.0):
        if lr <= 0 or weight_decay < 0 or not all(0.0 <= beta <= 1.0 for beta in betas):
            raise ValueError(f"AdamATan2: need lr > 0, weight_decay >= 0, betas in [0, 1]; got lr={lr}, "
                             f"weight_decay={weight_decay}, betas={betas}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay, a=a, b=b))

    @torch.no_grad()
    def step(self, closure=None, ok: torch.Tensor | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            lr, wd, a, b = group["lr"], group["weight_decay"], group["a"], group["b"]
            beta1, beta2 = group["betas"]
            for p in params:
                state = self.state[p]
                if not state:
                    state["steps"] = torch.zeros((), dtype=torch.float32, device=p.device)
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                elif not isinstance(state["steps"], torch.Tensor):  # the package's int count
                    state["steps"] = torch.tensor(float(state["steps"]), dtype=torch.float32, device=p.device)
            steps = [self.state[p]["steps"] for p in params]
            m = [self.state[p]["exp_avg"] for p in params]
            v = [self.state[p]["exp_avg_sq"] for p in params]
            grads = [p.grad for p in params]
            if ok is not None:  # a skipped step's gradients may be NaN: 0 * NaN would reach the state
                gate = ok.to(torch.float32)
                grads = [torch.where(ok, g, torch.zeros((), dtype=g.dtype, device=g.device)) for g in grads]
                torch._foreach_add_(steps, gate)
            else:
                torch._foreach_add_(steps, 1.0)
            squares = torch._foreach_mul(grads, grads)
            if ok is None:
                torch._foreach_lerp_(m, grads, 1.0 - beta1)
                torch._foreach_lerp_(v, squares, 1.0 - beta2)
            else:  # lerp with weight (1 - beta) * gate: m + w * (g - m), the formula lerp uses for w < 0.5
                for state, target, beta in ((m, grads, beta1), (v, squares, beta2)):
                    delta = torch._foreach_sub(target, state)
                    torch._foreach_mul_(delta, (1.0 - beta) * gate)
                    torch._foreach_add_(state, delta)
            # bias corrections 1 - beta^t, as reciprocals (the package multiplies by 1 / correction)
            inv1 = torch._foreach_pow(beta1, steps)
            torch._foreach_neg_(inv1)
            torch._foreach_add_(inv1, 1.0)
            torch._foreach_reciprocal_(inv1)
            inv2 = torch._foreach_pow(beta2, steps)
            torch._foreach_neg_(inv2)
            torch._foreach_add_(inv2, 1.0)
            torch._foreach_reciprocal_(inv2)
            torch._foreach_mul_(inv2, b * b)
            den = torch._foreach_mul(v, inv2)
            torch._foreach_sqrt_(den)
            update = torch._foreach_mul(m, inv1)
            for u, d in zip(update, den):
                torch.atan2(u, d, out=u)
            if ok is None:
                if wd > 0:
                    torch._foreach_mul_(params, 1.0 - lr * wd)
                torch._foreach_add_(params, update, alpha=-lr * a)
            else:
                if wd > 0:
                    torch._foreach_mul_(params, 1.0 - lr * wd * gate)
                torch._foreach_mul_(update, -lr * a * gate)
                torch._foreach_add_(params, update)
        return loss


def build_optimizer(model: nn.Module, lr: float, beta1: float, beta2: float, weight_decay: float) -> torch.optim.Optimizer:
    return AdamATan2(model.parameters(), lr=lr, betas=(beta1, beta2), weight_decay=weight_decay)


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


def clipped_step_on_device(optimizer: AdamATan2, grads: list[torch.Tensor], grad_norm: torch.Tensor, clip_norm: float,
                           loss: torch.Tensor) -> torch.Tensor:
    """`clipped_step` decided on the device, without a host read: the update is skipped (the returned
    0-dim bool is False) when the loss or the gradient norm is not finite; else the gradients are
    scaled by clip_norm / (grad_norm + 1e-6) where grad_norm > clip_norm (0: no clipping) and the
    optimizer steps. The caller reads the flag when it next reads device values (log interval)."""
    ok = torch.isfinite(loss) & torch.isfinite(grad_norm)
    if clip_norm:
        norm = grad_norm.double()
        scale = torch.where(norm > clip_norm, clip_norm / (norm + 1e-6), torch.ones_like(norm)).to(grad_norm.dtype)
        torch._foreach_mul_(grads, scale)
    optimizer.step(ok=ok)
    return ok


class EMA:
    """Exponential moving average of a model's parameters and buffers, held in a copy used for eval."""

    def __init__(self, model: nn.Module, rate: float):
        self.rate = rate
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, ok: torch.Tensor | None = None) -> None:
        """Move the average towards `model`; `ok` (0-dim bool device tensor): only where True (a
        skipped update leaves the average as it was, decided without a host read)."""
        ema_state, state = self.model.state_dict(), model.state_dict()
        floats = [name for name, value in state.items() if value.dtype.is_floating_point]
        if ok is None:
            torch._foreach_lerp_([ema_state[n] for n in floats], [state[n] for n in floats], 1.0 - self.rate)
        else:  # lerp's formula for weights < 0.5: a + w * (b - a)
            delta = torch._foreach_sub([state[n] for n in floats], [ema_state[n] for n in floats])
            torch._foreach_mul_(delta, (1.0 - self.rate) * ok.to(torch.float32))
            torch._foreach_add_([ema_state[n] for n in floats], delta)
        for name, value in state.items():
            if not value.dtype.is_floating_point:
                ema_state[name].copy_(value)

    def state_dict(self) -> dict:
        return self.model.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state)
