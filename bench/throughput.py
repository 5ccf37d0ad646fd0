"""Training-step throughput and utilisation.

    python -m bench.throughput [--device cpu|cuda] [--dtype float32|bfloat16] [--threads 2]
                               [--configs tiny,paper_standard,paper_hybrid] [--batch N] [--repeats 3]

Configs: tiny (bench.train_step's tiny preset); paper_standard / paper_hybrid = hidden 512,
8 heads, H_cycles 3, L_cycles 6, L_layers 2, standard (2 layers) / hybrid_standard (4 layers)
encoder. The batch is real ARC-AGI-1 (bench/common.py), the step is the train_step of
bench/train_step.py (fresh carry, one ACT step, backward, no optimizer).

Columns: samples/s, tokens/s (query canvas tokens P+S per sample, i.e. what the inner model
processes), peak memory (RSS on CPU, max allocated on CUDA), the step's model FLOPs (matmuls
and attention of encoder and inner model, counted with torch.utils.flop_counter on one step,
attention included via the CPU flash kernels' shapes), model FLOP/s, the FLOP/s of a plain
matmul of the same dtype and a similar shape ([B*(P+S), 512] @ [512, 3072]) timed in this
process, and their ratio (the utilisation).
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

from bench.common import (PRESETS, add_device_args, arc_batch, build_head, fmt_table, model_config, peak_memory_mib,
                          reset_peak_memory, time_fn, train_step, use_device_args, utilisation)

CONFIGS = {"tiny": PRESETS["tiny"], "paper_standard": PRESETS["paper"], "paper_hybrid": PRESETS["hybrid_standard"]}


def run_config(name: str, batch_size: int | None, device: str, dtype: str, repeats: int) -> dict:
    spec = dict(CONFIGS[name])
    B = batch_size or spec["batch"]
    cfg = model_config(spec, B)
    batch = {k: v.to(device) for k, v in arc_batch(B).items()}
    head = build_head(cfg, device)
    reset_peak_memory(device)
    sec = time_fn(lambda: train_step(head, batch, device, dtype), repeats=repeats, device=device)
    peak = peak_memory_mib(device)  # before the matmul reference allocates its own buffers
    tokens = B * (cfg["puzzle_emb_len"] + cfg["seq_len"])
    return {"config": name, "batch": B, "step_ms": 1000 * sec, "samples_per_s": B / sec, "tokens_per_s": tokens / sec,
            "peak_mib": peak, **utilisation(head, batch, cfg, sec, device, dtype)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.throughput", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_device_args(ap)
    ap.add_argument("--configs", default="tiny,paper_standard,paper_hybrid")
    ap.add_argument("--batch", type=int, default=None, help="override every config's batch size")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    use_device_args(args)
    results = [run_config(c, args.batch, args.device, args.dtype, args.repeats) for c in args.configs.split(",")]
    print(f"Training step throughput ({args.device}, {args.dtype}"
          f"{', %d threads' % torch.get_num_threads() if args.device == 'cpu' else ''}; peak memory is the "
          f"process's {'RSS' if args.device == 'cpu' else 'max allocated'} so far)")
    rows = [[r["config"], r["batch"], f"{r['step_ms']:.0f}", f"{r['samples_per_s']:.2f}", f"{r['tokens_per_s']:.0f}",
             f"{r['peak_mib']:.0f}", f"{r['model_gflop']:.0f}", f"{r['model_gflops_per_s']:.1f}",
             f"{r['matmul_gflops_per_s']:.1f}", f"{r['utilisation']:.2f}"] for r in results]
    print(fmt_table(["config", "batch", "step ms", "samples/s", "tokens/s", "peak MiB", "GFLOP", "model GFLOP/s",
                     "matmul GFLOP/s", "utilisation"], rows))
    print(json.dumps({"device": args.device, "dtype": args.dtype, "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
