"""AdamATan2 step time: the foreach implementation (training/optim.py) side by side with the
`adam-atan2-pytorch` package's per-parameter loop it replaces, on the paper preset's parameters
(bench/common.py PRESETS), with the same gradients, in one run.

    python -m bench.optimizer_step [--preset paper] [--device cpu|cuda] [--threads 2] [--repeats 10]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from adam_atan2_pytorch import AdamAtan2

from bench.common import PRESETS, build_head, model_config
from training.optim import AdamATan2


def time_steps(optimizer, params, device: str, repeats: int) -> float:
    """Median seconds of one optimizer.step() over `repeats` (after 2 warm-up steps)."""
    times = []
    for i in range(repeats + 2):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        optimizer.step()
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= 2:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def run(preset: str = "paper", device: str = "cpu", repeats: int = 10) -> dict:
    head = build_head(model_config(preset, PRESETS[preset]["batch"]), device)
    params = [p for p in head.parameters() if p.requires_grad]
    g = torch.Generator(device=device).manual_seed(0)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g, device=device) * 1e-3
    copies = [torch.nn.Parameter(p.detach().clone()) for p in params]
    for c, p in zip(copies, params):
        c.grad = p.grad.clone()
    kwargs = dict(lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
    package = time_steps(AdamAtan2(params, **kwargs), params, device, repeats)
    foreach = time_steps(AdamATan2(copies, **kwargs), copies, device, repeats)
    return {"preset": preset, "device": device, "tensors": len(params), "params": sum(p.numel() for p in params),
            "package_ms": 1e3 * package, "foreach_ms": 1e3 * foreach, "speedup": package / foreach}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="paper")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args(argv)
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    r = run(args.preset, args.device, args.repeats)
    print(f"AdamATan2 step, {r['preset']} preset ({r['tensors']} tensors, {r['params'] / 1e6:.2f}M params), {r['device']}: "
          f"package loop {r['package_ms']:.1f} ms, foreach {r['foreach_ms']:.1f} ms ({r['speedup']:.2f}x)")
    return r


if __name__ == "__main__":
    main()
