"""GPU correctness: the CUDA path computes what the CPU float32 path computes, within stated
tolerances. The checks are functions of a device (so they run under CPU bf16 autocast too:
tests/test_cuda_path.py) used by the GPU tests (tests/test_gpu.py, `pytest -m gpu`, skipped without
CUDA) and by the one-call device run (bench/gpu_check.py), which records them beside its timings."""
from __future__ import annotations

import torch

# Tolerances (relative: |a - b| / |b|, tensors by Frobenius norm).
# Calibrated on CPU with bf16 autocast: tiny-config losses bf16 vs float32 differed by <= 4.3e-3 on
# each of 12 steps; packed vs padded (batch 2, 3 demos) by <= 8.8e-5 (loss), 6.7e-3 (context),
# 4.4e-3 (logits), 4.0e-2 (worst gradient: hybrid set-encoder q_proj) in bf16, <= 3.3e-6 in float32.
TOL = {
    "fp32_device_vs_cpu_loss": 2e-3,    # each of the first REF_STEPS steps, CUDA float32 vs CPU float32 (the
                                        # efficient attention kernel may run float32 inputs as TF32)
    "bf16_vs_cpu_fp32_loss": 2e-2,      # each of the first REF_STEPS steps, CUDA bf16 vs CPU float32
    "compiled_vs_eager_loss": 2e-2,     # each of the first REF_STEPS steps, bf16 both
    "resumed_vs_straight_loss": 2e-2,   # each step after the resume, bf16 both
    # "grad": all gradients as one vector; "worst_grad": the worst single parameter (small
    # gradients have large bf16 relative errors, so it is checked in float32 only)
    "packed_vs_padded_fp32": {"loss": 1e-4, "context": 1e-4, "logits": 1e-4, "grad": 1e-4, "worst_grad": 1e-3},
    "packed_vs_padded_bf16": {"loss": 1e-2, "context": 3e-2, "logits": 3e-2, "grad": 3e-2},
    # the demo-reading paths (issue 11), one training step of the same weights: bf16 vs float32
    # on the device (map_read's sharp map choice amplifies rounding more than attention does)
    "reader_bf16_vs_fp32": {"loss": 2e-2, "logits": 5e-2},
}


def rel(a, b) -> float:
    """|a - b| / |b| for numbers or tensors (Frobenius norm)."""
    if isinstance(a, torch.Tensor):
        a, b = a.detach().double(), b.detach().double()
        return float((a - b).norm() / b.norm().clamp_min(1e-30))
    return abs(a - b) / max(abs(b), 1e-30)


class AttentionOps:
    """Counts F.scaled_dot_product_attention calls and the fused aten kernels they dispatch to
    (a call with no fused kernel under it ran the math fallback)."""

    FUSED = ("_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
             "_scaled_dot_product_cudnn_attention", "_scaled_dot_product_flash_attention_for_cpu",
             "_scaled_dot_product_fused_attention_overrideable")

    def __enter__(self):
        import torch.nn.functional as F
        from torch.utils._python_dispatch import TorchDispatchMode
        self.calls, self.ops = 0, {}
        self.F, self._orig = F, F.scaled_dot_product_attention
        watch = self

        def counting_sdpa(*a, **kw):
            watch.calls += 1
            return watch._orig(*a, **kw)
        F.scaled_dot_product_attention = counting_sdpa

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                name = func.overloadpacket.__name__
                if "attention" in name:
                    watch.ops[name] = watch.ops.get(name, 0) + 1
                return func(*args, **(kwargs or {}))
        self.mode = Mode()
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        self.mode.__exit__(*exc)
        self.F.scaled_dot_product_attention = self._orig
        return False

    def summary(self) -> dict:
        fused = sum(n for op, n in self.ops.items() if op in self.FUSED)
        return {"sdpa_calls": self.calls, "fused_forward_calls": fused, "math_fallback_calls": self.calls - fused,
                "ops": dict(self.ops)}


def packed_vs_padded(device: str, preset, batch_size: int, dtype: str) -> dict:
    """One train step of the same weights in both encoder layouts: loss, context, logits and every
    gradient compared (relative), plus which attention kernels ran and the carry's dtype."""
    from bench.common import arc_batch, autocast, build_head, model_config
    batch = {k: v.to(device) for k, v in arc_batch(batch_size).items()}
    head = build_head(model_config(preset, batch_size), device)
    res, runs = {}, {}
    for layout in ("packed", "padded"):
        head.model.set_encoder_packing(layout == "packed")
        head.zero_grad(set_to_none=True)
        with AttentionOps() as ops:
            with autocast(device, dtype):
                carry, loss, _, out, _ = head(head.initial_carry(batch), batch)
            loss.backward()
        runs[layout] = (loss.detach(), out["context"].detach(), out["logits"].detach(),
                        {n: p.grad.detach().clone() for n, p in head.named_parameters() if p.grad is not None})
        res[f"attention_{layout}"] = ops.summary()
        res[f"carry_dtype_{layout}"] = str(carry.z_H.dtype).replace("torch.", "")
    (l1, c1, g1, gr1), (l0, c0, g0, gr0) = runs["packed"], runs["padded"]
    grads = {n: rel(gr1[n], gr0[n]) for n in gr0 if n in gr1}
    worst = max(grads, key=grads.get)
    names = sorted(set(gr0) & set(gr1))
    flat = lambda g: torch.cat([g[n].flatten().double() for n in names])  # noqa: E731
    res.update(loss=rel(l1, l0), context=rel(c1, c0), logits=rel(g1, g0), grad=rel(flat(gr1), flat(gr0)),
               worst_grad=grads[worst], worst_grad_name=worst, same_grad_keys=set(gr0) == set(gr1))
    return res


def reader_precision(device: str, option: str | dict, batch_size: int) -> dict:
    """One training step of the paper preset (tiny on CPU) with `option` on (a name, or a dict of model
    options: the recipe's), float32 and bf16 on the same weights and batch: loss and logits, relative."""
    from bench.common import arc_batch, autocast, build_head, model_config
    batch = {k: v.to(device) for k, v in arc_batch(batch_size).items()}
    options = option if isinstance(option, dict) else {option: True}
    head = build_head(dict(model_config("tiny" if device == "cpu" else "paper", batch_size), **options), device)
    # the new paths start with zero output projections / gains (the model without them); give them
    # weights, as training would, or both dtypes would only compare the standard model
    torch.manual_seed(0)
    for name, p in head.model.named_parameters():
        new_path = name.startswith(("inner.demo_attn.", "inner.map_read.", "cell_lookup."))  # every layer's
        if new_path and name.endswith(("o_proj.weight", "choice.weight", "choice.bias")):
            torch.nn.init.normal_(p, std=0.02)
        elif name in ("cell_lookup.vote_gain", "cell_lookup.table_gain", "answer_size.gain"):
            torch.nn.init.constant_(p, 0.1)
    runs = {}
    for dtype in ("float32", "bfloat16"):
        head.zero_grad(set_to_none=True)
        with autocast(device, dtype):
            _, loss, _, out, _ = head(head.initial_carry(batch), batch)
        loss.backward()
        runs[dtype] = (loss.detach().float(), out["logits"].detach().float())
    del head
    (l32, g32), (l16, g16) = runs["float32"], runs["bfloat16"]
    return {"loss": rel(l16, l32), "logits": rel(g16, g32)}
