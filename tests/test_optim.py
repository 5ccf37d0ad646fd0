"""The foreach AdamATan2 (training/optim.py) against the `adam-atan2-pytorch` package it replaces,
and the non-finite skip decided on the device."""
from __future__ import annotations

import copy

import pytest
import torch
from adam_atan2_pytorch import AdamAtan2

from training.optim import AdamATan2, EMA, clipped_step_on_device


def params(seed: int = 0) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(*shape, generator=g)) for shape in ((7, 5), (5,), (3, 4, 2), (1,))]


def grads_for(step: int, ps) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    out = [torch.randn(p.shape, generator=g) * (0.1 + step) for p in ps]
    out[-1].zero_() if step == 2 else None  # an all-zero gradient (atan2(0, 0)) on one step
    return out


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
@pytest.mark.parametrize("gated", [False, True])
def test_update_equals_the_package_over_several_steps(weight_decay, gated):
    ours, ref = params(), params()
    opt = AdamATan2(ours, lr=1e-2, betas=(0.9, 0.95), weight_decay=weight_decay)
    ref_opt = AdamAtan2(ref, lr=1e-2, betas=(0.9, 0.95), weight_decay=weight_decay)
    for step in range(6):
        for group in (opt.param_groups, ref_opt.param_groups):
            group[0]["lr"] = 1e-2 * (1 + step) / 6  # a schedule, as the trainer sets it every step
        for p, q, g in zip(ours, ref, grads_for(step, ours)):
            p.grad, q.grad = g.clone(), g.clone()
        opt.step(ok=torch.tensor(True)) if gated else opt.step()
        ref_opt.step()
        for p, q in zip(ours, ref):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    for p, q in zip(ours, ref):
        torch.testing.assert_close(opt.state[p]["exp_avg_sq"], ref_opt.state[q]["exp_avg_sq"])
        assert float(opt.state[p]["steps"]) == ref_opt.state[q]["steps"] == 6


def test_a_package_checkpoint_loads_and_continues_the_same():
    ref = params()
    ref_opt = AdamAtan2(ref, lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1)
    for step in range(3):
        for q, g in zip(ref, grads_for(step, ref)):
            q.grad = g
        ref_opt.step()
    ours = [torch.nn.Parameter(q.detach().clone()) for q in ref]
    opt = AdamATan2(ours, lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1)
    opt.load_state_dict(copy.deepcopy(ref_opt.state_dict()))
    for p, q, g in zip(ours, ref, grads_for(3, ours)):
        p.grad, q.grad = g.clone(), g.clone()
    opt.step()
    ref_opt.step()
    for p, q in zip(ours, ref):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_a_non_finite_step_changes_nothing_and_is_decided_on_the_device():
    ps = params()
    opt = AdamATan2(ps, lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1)
    ema = EMA(torch.nn.ParameterList(ps), 0.9)
    for p, g in zip(ps, grads_for(0, ps)):
        p.grad = g
    opt.step()
    before = [p.detach().clone() for p in ps]
    state = copy.deepcopy(opt.state_dict())
    ema_before = copy.deepcopy(ema.state_dict())
    for p, g in zip(ps, grads_for(1, ps)):
        p.grad = g
    ps[0].grad[0, 0] = float("nan")
    grads = [p.grad for p in ps]
    norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    ok = clipped_step_on_device(opt, grads, norm, 1.0, torch.tensor(2.5))
    ema.update(torch.nn.ParameterList(ps), ok)
    assert isinstance(ok, torch.Tensor) and not bool(ok)
    for p, b in zip(ps, before):
        assert torch.equal(p.detach(), b)
    for key, value in opt.state_dict()["state"].items():
        for name in ("exp_avg", "exp_avg_sq", "steps"):
            assert torch.equal(value[name], state["state"][key][name]), name
    for name, value in ema.state_dict().items():
        assert torch.equal(value, ema_before[name])
    # the next finite step is the package's second step (the skipped one never happened)
    for p, g in zip(ps, grads_for(2, ps)):
        p.grad = g
    assert bool(clipped_step_on_device(opt, [p.grad for p in ps], torch.tensor(0.5), 1.0, torch.tensor(1.0)))
    assert all(float(opt.state[p]["steps"]) == 2 for p in ps)


@pytest.mark.parametrize("norm, clip, scale", [(4.0, 1.0, 1.0 / (4.0 + 1e-6)), (0.5, 1.0, 1.0), (4.0, 0.0, 1.0)])
def test_clipping_on_device_scales_as_the_host_rule(norm, clip, scale):
    p = torch.nn.Parameter(torch.zeros(3))
    p.grad = torch.ones(3)
    seen = {}

    class Recorder(AdamATan2):
        def step(self, closure=None, ok=None):
            seen["grad"] = p.grad.clone()

    clipped_step_on_device(Recorder([p]), [p.grad], torch.tensor(norm), clip, torch.tensor(1.0))
    torch.testing.assert_close(seen["grad"], torch.full((3,), scale))
