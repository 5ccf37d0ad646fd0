"""What test-time adaptation of all 400 ARC-AGI-1 eval puzzles costs: measured steps, FLOPs, and
the extrapolated time for a plan (adaptation steps + scoring every variant).

    python -m bench.tta_throughput [--preset tiny|paper] [--batch B] [--device cpu|cuda]
        [--dtype float32|bfloat16] [--threads 2] [--tta-steps 2000] [--tta-batch 256]
        [--eval-variants 8] [--gpu-tflops 989] [--utilisation 0.3]

The batch is real ARC-AGI-1 eval data as the adaptation sees it: the first B eval tasks (sorted
by id), demo 0 as the query and the other demos as its context (leave-one-out), 30x30 canvas.
MEASURED here: one adaptation step (training/tta.py's `adaptation_step`: one ACT step of the batch
through AdaptedHead + ACTLossHead with every weight and a per-puzzle context correction trainable,
backward, clipping, AdamATan2 step) and one eval ACT step (no grad) at batch B, and the model
FLOPs of each (torch.utils.flop_counter). EXTRAPOLATED: the plan's time, as
  adaptation: tta_steps x step time at batch tta_batch (scaled linearly from B),
  scoring:    eval samples (400 puzzles' 419 test inputs x eval_variants) x halt_max_steps ACT
              steps / B x eval step time (twice with tta=full's tta.predict=pooled: the
              checkpoint scores every sample too),
on this device, and a GPU estimate = the plan's FLOPs / (gpu_tflops x utilisation) (defaults: an
H100's dense bf16 peak, 989 TFLOP/s, at 30% -- bench.throughput --device cuda measures the real
utilisation). Ends with a JSON line.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from bench.common import (PRESETS, SIDE, add_device_args, build_head, count_flops, eval_step, fmt_table,
                          load_arc_tasks, model_config, sync, time_fn, use_device_args)
from dataset.random_batch import batch_from_pairs

ARC1_EVAL_TEST_INPUTS = 419  # of the 400 ARC-AGI-1 eval tasks
MAX_DEMOS = 10


def loo_batch(B: int, device: str) -> dict[str, torch.Tensor]:
    """First B eval tasks (with 2+ demos): demo 0 as the query, the other demos as its context."""
    tasks = [t for t in load_arc_tasks("eval") if len(t.train) > 1][:B]
    batch = batch_from_pairs([(t.train[0], t.train[1:]) for t in tasks], SIDE, MAX_DEMOS)
    batch["puzzle_index"] = torch.arange(B)
    return {k: v.to(device) for k, v in batch.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.tta_throughput", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=("tiny", "paper"), default="paper")  # bench/common.py PRESETS
    ap.add_argument("--batch", type=int, default=None)
    add_device_args(ap)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tta-steps", type=int, default=2000, help="the plan: adaptation steps")
    ap.add_argument("--tta-batch", type=int, default=256, help="the plan: adaptation samples per step")
    ap.add_argument("--eval-variants", type=int, default=8, help="the plan: variants voted over per test input")
    ap.add_argument("--num-puzzles", type=int, default=400)
    ap.add_argument("--gpu-tflops", type=float, default=989.0, help="GPU peak TFLOP/s of --dtype (H100 bf16 dense)")
    ap.add_argument("--utilisation", type=float, default=0.3, help="assumed model FLOP/s / peak on the GPU")
    args = ap.parse_args(argv)
    use_device_args(args)

    from training.tta import AdaptedHead, ContextOffsets, TTASettings, adaptation_optimizer, adaptation_step

    spec = PRESETS[args.preset]
    B = args.batch or spec["batch"]
    cfg = model_config(spec, B, MAX_DEMOS, halt_exploration_prob=0.1)
    head = build_head(cfg, args.device)
    tta_dir = Path(__file__).resolve().parents[1] / "config" / "tta"
    full_yaml = OmegaConf.merge(OmegaConf.load(tta_dir / "none.yaml"), OmegaConf.load(tta_dir / "full.yaml"))
    full_yaml.pop("defaults", None)  # tta=full's settings (full.yaml on top of none.yaml, as Hydra composes it)
    settings = TTASettings.from_config({**OmegaConf.to_container(full_yaml), "steps": 10**6, "global_batch_size": B})
    offsets = ContextOffsets(B, 1, cfg["puzzle_emb_len"], cfg["hidden_size"], np.zeros(B, dtype=np.int64))
    adapted = AdaptedHead(head, offsets).to(args.device)
    optimizer = adaptation_optimizer(adapted, settings)
    batch = loo_batch(B, args.device)
    state = {"carry": None}

    def adapt_step():
        adapted.train()
        if state["carry"] is None:
            state["carry"] = adapted.initial_carry(batch)
        state["carry"], _ = adaptation_step(adapted, optimizer, state["carry"], batch, 0, settings, B, args.dtype)

    step_s = time_fn(adapt_step, repeats=args.repeats, device=args.device)
    eval_s = time_fn(lambda: eval_step(adapted, batch, args.device, args.dtype), repeats=args.repeats,
                     device=args.device)
    state["carry"] = None
    adapt_flops = count_flops(adapt_step)
    eval_flops = count_flops(lambda: eval_step(adapted, batch, args.device, args.dtype))
    sync(args.device)

    test_inputs = round(ARC1_EVAL_TEST_INPUTS * args.num_puzzles / 400)
    predict = settings.predict
    eval_runs = 2 if predict == "pooled" else 1   # pooled scores the checkpoint too: the eval runs twice
    eval_act_steps = eval_runs * test_inputs * args.eval_variants * cfg["halt_max_steps"]
    plan_adapt_s = args.tta_steps * step_s * args.tta_batch / B
    plan_eval_s = eval_act_steps / B * eval_s
    plan_flops = args.tta_steps * args.tta_batch * adapt_flops / B + eval_act_steps * eval_flops / B
    gpu_s = plan_flops / (args.gpu_tflops * 1e12 * args.utilisation)
    n_params = sum(p.numel() for p in head.parameters())
    out = {
        "preset": args.preset, "device": args.device, "dtype": args.dtype, "batch": B, "params_m": n_params / 1e6,
        "adapt_step_ms": 1000 * step_s, "adapt_samples_per_s": B / step_s, "eval_act_step_ms": 1000 * eval_s,
        "adapt_gflop_per_sample": adapt_flops / B / 1e9, "eval_gflop_per_act_step_sample": eval_flops / B / 1e9,
        "plan": {"tta_steps": args.tta_steps, "tta_batch": args.tta_batch, "adapt_samples": args.tta_steps * args.tta_batch,
                 "eval_samples": test_inputs * args.eval_variants, "eval_runs": eval_runs, "eval_act_steps": eval_act_steps,
                 "num_puzzles": args.num_puzzles},
        "plan_adapt_min_here": plan_adapt_s / 60, "plan_eval_min_here": plan_eval_s / 60,
        "plan_pflop": plan_flops / 1e15,
        "gpu_estimate_min": gpu_s / 60, "gpu_assumption": {"tflops": args.gpu_tflops, "utilisation": args.utilisation},
    }
    where = f"{args.device}, {args.dtype}" + (f", {torch.get_num_threads()} threads" if args.device == "cpu" else "")
    print(f"Test-time adaptation cost, preset {args.preset} ({n_params / 1e6:.1f}M params), batch {B} ({where}); "
          f"measured on real ARC-AGI-1 eval leave-one-out samples")
    print(fmt_table(["", "ms / step", "samples/s", "GFLOP / sample"], [
        ["adaptation step (fwd+bwd+AdamATan2)", f"{1000 * step_s:.0f}", f"{B / step_s:.2f}",
         f"{adapt_flops / B / 1e9:.2f}"],
        ["eval ACT step (no grad)", f"{1000 * eval_s:.0f}", f"{B / eval_s:.2f}", f"{eval_flops / B / 1e9:.2f}"],
    ]))
    print(f"plan: {args.tta_steps} steps x {args.tta_batch} samples over {args.num_puzzles} puzzles "
          f"({args.tta_steps * args.tta_batch / args.num_puzzles:.0f} samples per puzzle), then {test_inputs} test inputs x "
          f"{args.eval_variants} variants x {cfg['halt_max_steps']} ACT steps"
          f"{f' x {eval_runs} (tta.predict={predict}: the checkpoint scores too)' if eval_runs > 1 else ''}: "
          f"{plan_flops / 1e15:.2f} PFLOP")
    print(f"  here ({where}): adaptation {plan_adapt_s / 60:.1f} min + scoring {plan_eval_s / 60:.1f} min (extrapolated)")
    print(f"  GPU estimate: {gpu_s / 60:.1f} min at {args.gpu_tflops:.0f} TFLOP/s x {args.utilisation:.0%} utilisation")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
